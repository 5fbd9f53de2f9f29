//! The transport's record layer after the handshake (SPEC §11), fed what a peer can send:
//! genuine frames of any size around the record boundaries and the frame limit, records an
//! authenticated but faulty peer seals with broken framing, and bytes from someone on the
//! path, all cut into arbitrary reads. The decoder never panics and never yields a frame
//! past its limit; genuine frames sent before anything else come out intact and in order;
//! a clean stream opens completely, or ends with `Oversize` exactly at the first frame past
//! the limit.
#![no_main]
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use splitbft_transport::{FrameError, MAX_RECORD_PLAINTEXT, Session, session_pair};
use splitbft_types::keys::ClusterSecrets;
use tokio_util::codec::{Decoder, Encoder};

fn sessions() -> &'static (Session, Session) {
    static PAIR: OnceLock<(Session, Session)> = OnceLock::new();
    PAIR.get_or_init(|| session_pair(&ClusterSecrets::deterministic(7, 1, 1, 1)))
}

/// Reads the fuzzer's bytes as a script.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fuzz_target!(|data: &[u8]| {
    let (sender, receiver) = sessions();
    let mut script = Script(data);
    let Some(limit) = script.u16() else { return };
    // Up to about two records' worth, so that frames past the limit span records.
    let max_frame = usize::from(limit) * 2;
    let mut encoder = sender.encoder(usize::MAX);
    let mut wire = BytesMut::new();
    // Genuine frames sealed before anything else was put on the wire.
    let mut clean: Vec<Bytes> = Vec::new();
    let mut dirty = false;
    while let Some(op) = script.byte() {
        match op % 4 {
            0 | 1 => {
                // A genuine frame: its length near a record boundary or small.
                let Some(n) = script.u16() else { break };
                let len = if op % 4 == 0 { usize::from(n) } else { MAX_RECORD_PLAINTEXT - 8 + usize::from(n % 16) };
                let frame = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
                encoder.encode(frame.clone(), &mut wire).expect("the sender has no limit");
                if !dirty {
                    clean.push(frame);
                }
            }
            2 => {
                // A record an authenticated, faulty peer sealed: any plaintext.
                let Some(n) = script.byte() else { break };
                let plaintext = script.bytes(usize::from(n)).to_vec();
                encoder.encode_record(&plaintext, &mut wire).expect("far from the nonce limit");
                dirty = true;
            }
            _ => {
                // Bytes from someone on the path.
                let Some(n) = script.byte() else { break };
                wire.extend_from_slice(script.bytes(usize::from(n)));
                dirty = true;
            }
        }
    }
    // Cut the stream into reads of sizes the script's last byte picks.
    let step = 1 + usize::from(data.last().copied().unwrap_or(0)) * 97;
    let mut decoder = receiver.decoder(max_frame);
    let mut buffer = BytesMut::new();
    let mut opened: Vec<BytesMut> = Vec::new();
    let mut error: Option<FrameError> = None;
    'feed: for chunk in wire.chunks(step) {
        buffer.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max_frame, "a frame of {} bytes past the limit {max_frame}", frame.len());
                    opened.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    // The genuine frames up to the first one past the limit come out first, intact.
    let fitting = clean.iter().take_while(|f| f.len() <= max_frame).count();
    assert!(opened.len() >= fitting, "{} opened, {fitting} fit: {error:?}", opened.len());
    for (o, c) in opened.iter().zip(&clean[..fitting]) {
        assert_eq!(o[..], c[..]);
    }
    if !dirty {
        if fitting == clean.len() {
            assert!(error.is_none(), "a clean stream failed: {error:?}");
            assert_eq!(opened.len(), clean.len());
            assert!(buffer.is_empty(), "bytes left over after the last frame");
        } else {
            assert_eq!(opened.len(), fitting);
            assert!(matches!(error, Some(FrameError::Oversize { len, .. }) if len == clean[fitting].len()), "{error:?}");
        }
    }
});
