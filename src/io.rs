//! File and stdin adapters for the embedded mode: a reader thread that turns JSONL into
//! chunks of raw records, and writer threads that put output lines into files or stdout.
//! Both run off the timely workers and talk to them through bounded channels, so a slow
//! disk or a blocked stdin never blocks a worker.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use bizra_dataflows::observation::{InputRef, Text};
use bizra_dataflows::operators::wall_ms;
use bizra_dataflows::pipeline::RawRecord;

/// Where lines come from: a file, or stdin for `-`.
#[derive(Clone, Debug)]
pub enum InputSpec {
    Stdin,
    File(PathBuf),
}

impl InputSpec {
    pub fn parse(s: &str) -> InputSpec {
        if s == "-" {
            InputSpec::Stdin
        } else {
            InputSpec::File(PathBuf::from(s))
        }
    }

    /// The `input.topic` of records read from here.
    pub fn topic(&self) -> Text {
        match self {
            InputSpec::Stdin => "stdin".into(),
            InputSpec::File(p) => p.display().to_string().into(),
        }
    }
}

/// Chunks of raw records from the reader thread (or the read error that ended it).
pub type ChunkReceiver = Receiver<io::Result<Vec<RawRecord>>>;
/// A writer's input (`None` = discard) and its thread, which reports the final I/O result.
pub type Writer = (Option<SyncSender<Vec<u8>>>, Option<JoinHandle<io::Result<()>>>);

/// How many chunks may wait between the reader and worker 0.
pub const READ_QUEUE: usize = 4;
/// Bytes kept of a line that exceeds the message limit (what the dead letter can carry).
const OVERSIZE_KEEP: usize = bizra_dataflows::dead_letter::RAW_KEEP_BYTES;

/// Starts the reader thread. Each chunk holds up to `chunk_records` records and, but for a
/// single record, up to `chunk_bytes` bytes; a partial chunk is sent whenever the reader would
/// otherwise wait for more input. Blank lines are skipped (they are separators, not records)
/// but keep their line number as offset. At most [`READ_QUEUE`] chunks wait for the worker,
/// so the reader holds at most `(READ_QUEUE + 1) × chunk_bytes` plus one record.
pub fn spawn_reader(
    spec: InputSpec,
    max_message_bytes: usize,
    chunk_records: usize,
    chunk_bytes: usize,
) -> io::Result<(ChunkReceiver, JoinHandle<()>)> {
    let source: Box<dyn Read + Send> = match &spec {
        InputSpec::Stdin => Box::new(io::stdin()),
        InputSpec::File(p) => {
            Box::new(File::open(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?)
        }
    };
    let topic = spec.topic();
    let (tx, rx) = sync_channel(READ_QUEUE);
    let handle = std::thread::Builder::new()
        .name("bizra-reader".into())
        .spawn(move || {
            let mut reader = BufReader::with_capacity(1 << 20, source);
            let mut chunk = Vec::with_capacity(chunk_records);
            let mut bytes_in_chunk = 0;
            let mut line_no: i64 = 0;
            loop {
                match read_line_limited(&mut reader, max_message_bytes) {
                    Ok(None) => break,
                    Ok(Some((bytes, total))) => {
                        let position = line_no;
                        line_no += 1;
                        if bytes.iter().all(u8::is_ascii_whitespace) && total == bytes.len() {
                            continue;
                        }
                        bytes_in_chunk += bytes.len();
                        chunk.push(RawRecord {
                            bytes,
                            input: Some(InputRef {
                                topic: topic.clone(),
                                partition: 0,
                                offset: position,
                            }),
                            position: position as u64,
                            ingest_ms: wall_ms(),
                            message_ms: None,
                            broker_ms: None,
                            oversize: (total > max_message_bytes).then_some(total),
                        });
                        let flush = chunk.len() >= chunk_records
                            || bytes_in_chunk >= chunk_bytes
                            || reader.buffer().is_empty();
                        if flush {
                            bytes_in_chunk = 0;
                            if tx.send(Ok(std::mem::take(&mut chunk))).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = tx.send(Ok(chunk));
            }
        })?;
    Ok((rx, handle))
}

/// Reads one line without its newline (and a trailing `\r`). A line longer than `max` is
/// consumed to its end but only its first bytes are kept; the second value is its length.
fn read_line_limited(r: &mut impl BufRead, max: usize) -> io::Result<Option<(Vec<u8>, usize)>> {
    let mut line = Vec::new();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        let keep_limit = if total + take > max {
            OVERSIZE_KEEP.min(max)
        } else {
            max
        };
        let room = keep_limit.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        total += take;
        r.consume(take + usize::from(done));
        if done {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if line.last() == Some(&b'\r') && total <= max {
        line.pop();
        total -= 1;
    }
    if total > max {
        line.truncate(OVERSIZE_KEEP);
    }
    Ok(Some((line, total)))
}

/// Where one output goes.
#[derive(Clone, Debug)]
pub enum OutputSpec {
    Stdout,
    File(PathBuf),
    /// Counted, not written (not even serialized).
    Discard,
    /// Serialized and then dropped: the whole output path without the disk (benchmarks).
    Null,
}

/// Chunks queued per writer before workers see backpressure.
const WRITE_QUEUE: usize = 16;

/// Starts a writer thread; returns its sender (`None` for discard) and handle. A write that
/// fails (a full disk, a closed stdout) is fatal: the thread ends the process naming the
/// output and the error (see `fatal.rs`).
pub fn spawn_writer(spec: OutputSpec) -> io::Result<Writer> {
    let name = match &spec {
        OutputSpec::File(p) => p.display().to_string(),
        OutputSpec::Stdout => "stdout".into(),
        OutputSpec::Discard | OutputSpec::Null => String::new(),
    };
    let sink: Box<dyn Write + Send> = match &spec {
        OutputSpec::Discard => return Ok((None, None)),
        OutputSpec::Stdout => Box::new(io::stdout()),
        OutputSpec::Null => Box::new(io::sink()),
        OutputSpec::File(p) => {
            Box::new(File::create(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?)
        }
    };
    let (tx, rx) = sync_channel::<Vec<u8>>(WRITE_QUEUE);
    let handle = std::thread::Builder::new()
        .name("bizra-writer".into())
        .spawn(move || {
            let mut w = BufWriter::with_capacity(1 << 20, sink);
            let written = rx
                .into_iter()
                .try_for_each(|chunk| w.write_all(&chunk))
                .and_then(|()| w.flush());
            if let Err(e) = written {
                crate::fatal::halt(format_args!("writing {name}: {e}"));
            }
            Ok(())
        })?;
    Ok((Some(tx), Some(handle)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &str, max: usize) -> Vec<(Vec<u8>, usize)> {
        let mut r = BufReader::with_capacity(4, input.as_bytes());
        std::iter::from_fn(|| read_line_limited(&mut r, max).unwrap()).collect()
    }

    #[test]
    fn lines_are_split_and_crlf_trimmed() {
        let got = lines("ab\r\ncd\n\nef", 100);
        let texts: Vec<_> = got
            .iter()
            .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert_eq!(texts, ["ab", "cd", "", "ef"]);
    }

    #[test]
    fn long_lines_are_cut_and_report_their_length() {
        let long = "x".repeat(50);
        let got = lines(&format!("{long}\nok\n"), 10);
        assert_eq!(got[0].1, 50);
        assert!(got[0].0.len() <= 50);
        assert_eq!(got[1], (b"ok".to_vec(), 2));
    }
}
