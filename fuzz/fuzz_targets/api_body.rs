#![no_main]

use std::sync::LazyLock;

use meshd_fuzz::Api;

/// One replica and router for the whole run: opening sled per input would dominate.
static API: LazyLock<Api> = LazyLock::new(Api::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshd_fuzz::api_body(&API, data));
