//! Fuzz target `segment_reader`: the archive's segment reader on corrupt and truncated files,
//! through its public entry points `archive::episodes` and `archive::verify` (`archive::find`
//! reads the same way, behind the id filter).
//! The input is written as `shard-00000/seg-000000000000.xz` in a directory of this process
//! under /dev/shm. First byte even: the rest is the file as it is (xz framing, blocks and
//! checks under mutation). First byte odd: the rest is decompressed segment content (entry
//! frames), which the target compresses itself, so that mutations reach the entries and the
//! episodes inside them. Neither call may panic, and run it with `-malloc_limit_mb` to catch
//! allocations the input sizes. It does not check what the calls report.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

use bizra::archive;
use libfuzzer_sys::fuzz_target;
use xz2::stream::{Action, Check, Status, Stream};

/// This process's archive directory, made once (one per process, so parallel jobs do not
/// share a file).
fn archive_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base =
            std::env::var_os("BIZRA_FUZZ_TMP").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
        let dir = base.join(format!("bizra-fuzz-segment-{}", std::process::id()));
        fs::create_dir_all(dir.join("shard-00000")).expect("create the fuzz archive directory");
        dir
    })
}

/// `content` as one xz stream, as the writer makes it (CRC64 checks; a low preset for speed).
fn compress(content: &[u8]) -> Vec<u8> {
    let mut xz = Stream::new_easy_encoder(1, Check::Crc64).expect("an xz encoder");
    let mut out = Vec::with_capacity(content.len() / 2 + 128);
    let mut input = content;
    loop {
        if out.len() == out.capacity() {
            out.reserve(4096);
        }
        let before = xz.total_in();
        let status = xz
            .process_vec(input, &mut out, Action::Finish)
            .expect("xz compresses");
        input = &input[(xz.total_in() - before) as usize..];
        if status == Status::StreamEnd {
            return out;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = archive_dir();
    let file = if mode & 1 == 1 {
        compress(rest)
    } else {
        rest.to_vec()
    };
    fs::write(dir.join("shard-00000/seg-000000000000.xz"), file).expect("write the segment");

    if let Ok(episodes) = archive::episodes(dir) {
        for item in episodes {
            // Touch what was read, so nothing is optimised away.
            if let Ok(stored) = item {
                std::hint::black_box(stored.episode.records.len());
            }
        }
    }
    let _ = std::hint::black_box(archive::verify(dir));
});
