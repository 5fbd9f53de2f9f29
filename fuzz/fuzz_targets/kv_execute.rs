//! Any op bytes execute deterministically: two stores fed the same ops agree, and a
//! snapshot restores to the same digest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use splitbft_apps::kv::KvStore;
use splitbft_types::Application;

fuzz_target!(|data: &[u8]| {
    let (mut a, mut b) = (KvStore::new(), KvStore::new());
    for op in data.split(|&b| b == 0xff) {
        assert_eq!(a.execute(op), b.execute(op));
    }
    let mut c = KvStore::new();
    c.restore(&a.snapshot()).expect("own snapshot restores");
    assert_eq!(c.digest(), a.digest());
    assert_eq!(a.digest(), b.digest());
});
