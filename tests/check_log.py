#!/usr/bin/env python3
"""An independent check of bizra's decision log, written from SPEC §3 and docs/FORMATS.md
only (hashlib and the `cryptography` package; no bizra code): commitment chains, their
Ed25519 signatures, and the C2SP signed-note checkpoints over each shard's log.

usage: check_log.py COMMITMENTS.jsonl CHECKPOINTS.jsonl PUBKEY_BASE64 DEPLOYMENT [PROOFS.jsonl]

Checks, per shard: seqs 0..n-1 each present once (exact duplicates allowed: at-least-once),
one run id, `prev` = SHA3-256 of the previous message, each signature; per checkpoint: the
note's key hash and Ed25519 signature (key name = origin), origin = DEPLOYMENT/bizra/shard/K,
and the root = RFC 6962 SHA3-256 tree of leaves SHA3-256(0x00 ‖ message) of seqs 0..size-1,
so each checkpoint is consistent with every earlier one. With PROOFS (lines printed by
`bizra audit prove`), each inclusion and consistency proof is verified with RFC 9162 §2.1.3.2
and §2.1.4.2. Prints one line per problem and a summary; exits 1 on any problem.
"""
import base64
import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def sha3(b):
    return hashlib.sha3_256(b).digest()


def leaf_hash(b):
    return sha3(b"\x00" + b)


def node(l, r):
    return sha3(b"\x01" + l + r)


def mth(leaves):
    n = len(leaves)
    if n == 0:
        return sha3(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def message(c):
    return (b"bizra/commitment/v1\x00" + bytes.fromhex(c["run"]) + struct.pack(">IQQ", c["shard"], c["seq"], c["tree_size"])
            + bytes.fromhex(c["root"]) + bytes.fromhex(c["prev"]))


def verify_inclusion(leaf, index, size, proof, root):
    # RFC 9162 §2.1.3.2
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(m, n, old_root, new_root, proof):
    # RFC 9162 §2.1.4.2
    if m == n:
        return not proof and old_root == new_root
    if m == 0 or m > n:
        return False
    if m & (m - 1) == 0:
        proof = [old_root] + proof
    if not proof:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def open_note(note, name, pk_raw):
    text, sep, sigs = note.partition("\n\n")
    if not sep:
        return None, "no blank line before the signatures"
    text += "\n"
    want = hashlib.sha256(name.encode() + b"\n\x01" + pk_raw).digest()[:4]
    pk = Ed25519PublicKey.from_public_bytes(pk_raw)
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            return None, f"signature line {line!r} does not start with an em dash"
        who, _, b64 = line[2:].rpartition(" ")
        raw = base64.b64decode(b64)
        if who != name or raw[:4] != want:
            continue
        try:
            pk.verify(raw[4:], text.encode())
        except InvalidSignature:
            return None, "the signature does not verify"
        return text, None
    return None, f"no signature by {name} with key hash {want.hex()}"


def main():
    commitments_path, checkpoints_path, pubkey, deployment = sys.argv[1:5]
    proofs_path = sys.argv[5] if len(sys.argv) > 5 else None
    pk_raw = base64.b64decode(pubkey)
    pk = Ed25519PublicKey.from_public_bytes(pk_raw)
    problems = []
    chains = {}
    for line in open(commitments_path):
        if line.strip():
            c = json.loads(line)
            chains.setdefault(c["shard"], {}).setdefault(c["seq"], []).append(c)
    logs = {}
    for shard, by_seq in sorted(chains.items()):
        leaves, prev, runs = [], b"\x00" * 32, set()
        for seq in range(max(by_seq) + 1):
            copies = by_seq.get(seq)
            if not copies:
                problems.append(f"shard {shard}: seq {seq} missing (gap)")
                break
            c = copies[0]
            if any(x != c for x in copies[1:]):
                problems.append(f"shard {shard}: seq {seq} has two different commitments (fork)")
            runs.add(c["run"])
            msg = message(c)
            if bytes.fromhex(c["prev"]) != prev:
                problems.append(f"shard {shard}: seq {seq} prev does not hash seq {seq - 1}")
            try:
                pk.verify(base64.b64decode(c["signature"]), msg)
            except InvalidSignature:
                problems.append(f"shard {shard}: seq {seq} signature does not verify")
            prev = sha3(msg)
            leaves.append(leaf_hash(msg))
        if len(runs) > 1:
            problems.append(f"shard {shard}: several run ids {sorted(runs)}")
        logs[shard] = leaves
    checkpoints = 0
    last = {}
    for line in open(checkpoints_path):
        if not line.strip():
            continue
        checkpoints += 1
        r = json.loads(line)
        shard, origin = r["shard"], f"{deployment}/bizra/shard/{r['shard']}"
        text, err = open_note(r["note"], origin, pk_raw)
        if err:
            problems.append(f"checkpoint shard {shard} size {r['tree_size']}: {err}")
            continue
        o, size, root = text.splitlines()[:3]
        size, root = int(size), base64.b64decode(root)
        if o != origin or size != r["tree_size"]:
            problems.append(f"checkpoint shard {shard}: origin {o!r} size {size} do not match the record")
        leaves = logs.get(shard, [])
        if size > len(leaves):
            problems.append(f"checkpoint shard {shard} size {size}: only {len(leaves)} commitments")
        elif mth(leaves[:size]) != root:
            problems.append(f"checkpoint shard {shard} size {size}: root is not the log's")
        if shard in last and last[shard] > size:
            problems.append(f"checkpoint shard {shard}: size {size} after size {last[shard]}")
        last[shard] = max(size, last.get(shard, 0))
    proofs = 0
    if proofs_path:
        for line in open(proofs_path):
            if not line.strip():
                continue
            p = json.loads(line)
            path = [bytes.fromhex(h) for h in p["proof"]]
            proofs += 1
            leaves = logs.get(p["shard"], [])
            if p["kind"] == "inclusion":
                ok = verify_inclusion(bytes.fromhex(p["leaf_hash"]), p["index"], p["tree_size"], path, bytes.fromhex(p["root"]))
                # ... and about this log: its leaf and its root.
                ok = ok and p["tree_size"] <= len(leaves) and leaves[p["index"]].hex() == p["leaf_hash"]
                ok = ok and mth(leaves[:p["tree_size"]]).hex() == p["root"]
            else:
                ok = verify_consistency(p["old_size"], p["new_size"], bytes.fromhex(p["old_root"]), bytes.fromhex(p["new_root"]), path)
                ok = ok and p["new_size"] <= len(leaves)
                ok = ok and mth(leaves[:p["old_size"]]).hex() == p["old_root"] and mth(leaves[:p["new_size"]]).hex() == p["new_root"]
            if not ok:
                problems.append(f"proof {line.strip()[:120]} does not verify")
    for p in problems:
        print("PROBLEM", p)
    total = sum(len(v) for v in logs.values())
    print(f"shards {len(logs)} commitments {total} checkpoints {checkpoints} proofs {proofs} problems {len(problems)}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
