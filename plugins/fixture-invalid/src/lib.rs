//! Test fixture: a plugin whose manifest the host must refuse, because two
//! operations share a name. (Not loaded by default; the tests load it to see
//! it rejected.)

use opbox_sdk::{Context, Plugin, Result};

async fn same(_ctx: Context, input: u32) -> Result<u32> {
    Ok(input)
}

fn plugin() -> Plugin {
    Plugin::new()
        .query("twice", "The first of two operations with one name.", same)
        .mutation("twice", "The second of two operations with one name.", same)
}

opbox_sdk::export!(plugin);
