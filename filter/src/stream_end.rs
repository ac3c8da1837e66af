//! One VM entry at a stream's end instead of two.
//!
//! Envoy ends every HTTP stream with `proxy_on_done` then, at once,
//! `proxy_on_delete` (`Context::onDestroy`: `onDone(); onDelete();`), each a
//! call into the VM, and calls either only if the module exports it
//! (proxy-wasm-cpp-host's `ContextBase::onDone` / `onDelete`). The SDK's
//! `proxy_on_done` runs the context's `on_done`; its `proxy_on_delete` drops
//! the context from the SDK's map. [`sidestream_on_done`] runs both, in that
//! order, in one entry: scripts/build-filter.sh ships it as the module's
//! `proxy_on_done` and leaves the SDK's two exports out (filter/exports.txt),
//! so the SDK's behaviour is kept and Envoy enters the VM once.
//!
//! A root context's `on_done` (when the VM shuts down) may answer `false`:
//! "not done yet, I will call `proxy_done`". Then nothing is deleted, as Envoy
//! would not call `proxy_on_delete` either.
//!
//! bench/empty-filter includes this file too (`#[path]`), so the benchmark's
//! empty-filter baseline is trimmed the same way.

#[allow(unsafe_code)] // calls two of the SDK's `#[no_mangle]` exports by their symbols
mod abi {
    extern "C" {
        // The SDK's exports (proxy_wasm's dispatcher), resolved at link time.
        fn proxy_on_done(context_id: u32) -> bool;
        fn proxy_on_delete(context_id: u32);
    }

    /// The SDK's `proxy_on_done`, then, when the context is done, its
    /// `proxy_on_delete`: shipped as the module's `proxy_on_done`.
    #[no_mangle]
    pub extern "C" fn sidestream_on_done(context_id: u32) -> bool {
        // SAFETY: both are plain `extern "C"` functions of the SDK taking a
        // context id, called in the order Envoy calls them.
        let done = unsafe { proxy_on_done(context_id) };
        if done {
            // SAFETY: as above.
            unsafe { proxy_on_delete(context_id) };
        }
        done
    }
}
