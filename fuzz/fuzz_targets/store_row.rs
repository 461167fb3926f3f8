#![no_main]

use std::sync::LazyLock;

use meshd_fuzz::{Store, StoreFile};

/// One replica for the whole run: opening sled per input would dominate.
static STORE: LazyLock<Store> = LazyLock::new(Store::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(rows) = StoreFile::from_json(data) {
        meshd_fuzz::store_rows(&STORE, &rows);
    }
});
