//! A replica's log is read back from a disk the host controls (SPEC §10): whatever bytes a
//! segment holds, opening the log gives the records or a typed error naming the file, never
//! a panic; and a log that opened takes a new record and gives it back on the next open
//! (a cut torn tail or preallocated zeros do not swallow later appends).
#![no_main]
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use splitbft_broker::storage::faulty::FaultyStorage;
use splitbft_broker::storage::{SharedStorage, Storage};
use splitbft_broker::wal::Wal;
use splitbft_types::CompartmentKind;
use splitbft_types::durable::{RecordKind, SealedState};

const DATA: &str = "/data/replica-0";

fuzz_target!(|data: &[u8]| {
    let storage = FaultyStorage::new();
    let dir = Path::new(DATA).join("state");
    storage.create_dir_all(&dir).unwrap();
    // The first byte splits the input into an older and a current segment.
    let (older, current) = match data.split_first() {
        Some((split, rest)) => rest.split_at((*split as usize * rest.len() / 255).min(rest.len())),
        None => (&[][..], data),
    };
    for (n, bytes) in [(0u64, older), (1, current)] {
        if n == 0 && bytes.is_empty() {
            continue;
        }
        let mut file = storage.append(&dir.join(format!("wal-{n:020}.log"))).unwrap();
        file.write_all(bytes).unwrap();
        file.sync().unwrap();
    }
    let open = || Wal::open_on(Arc::new(storage.clone()) as SharedStorage, Path::new(DATA), 1 << 16);
    let Ok((mut wal, _)) = open() else { return };
    let record = SealedState { kind: RecordKind::Image, epoch: 9, index: 77, sealed: vec![0xab; 40] };
    wal.append(CompartmentKind::Confirmation, &record).unwrap();
    wal.commit().unwrap();
    wal.compact().unwrap();
    drop(wal);
    let (_, recovered) = open().expect("a log that opened and was appended to opens again");
    assert_eq!(recovered[CompartmentKind::Confirmation.index()].last(), Some(&record));
});
