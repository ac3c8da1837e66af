//! The request header map as the host serialises it, without the SDK's
//! decoding into a `String` and a `Vec` per name and value (`get_map_bytes`):
//! the filter reads it in place (`request::RequestHeaders::parse`).
//!
//! bench/empty-filter and bench/hostcall-probe include this file too
//! (`#[path]`), so they read the map exactly as the filter does.

#[allow(unsafe_code)] // the raw ABI call, and taking back what the host allocated
mod abi {
    use proxy_wasm::types::{MapType, Status};

    // The SDK declares the same import (proxy_wasm::hostcalls).
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> Status;
    }

    /// The serialised request header map (empty: none).
    pub fn request_header_map() -> Result<Vec<u8>, Status> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer to `size` bytes it allocated with
        // the SDK's proxy_on_memory_allocate (a forgotten `Vec<u8>` of
        // capacity `size`), as for the SDK's own `get_map_bytes`.
        let status = unsafe {
            proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size)
        };
        match status {
            Status::Ok if data.is_null() => Ok(Vec::new()),
            // SAFETY: as above; the Vec takes the allocation back, as the SDK does.
            Status::Ok => Ok(unsafe { Vec::from_raw_parts(data, size, size) }),
            status => Err(status),
        }
    }
}

pub use abi::request_header_map;
