//! The C entry points of `dist.cpp` (c10d), compiled with the Gloo headers.

use super::super::CTensor;
use std::ffi::{c_char, c_void};

extern "C" {
    pub fn vx_dist_store_new(
        host: *const c_char,
        port: u16,
        is_server: bool,
        timeout_ms: i64,
        out: *mut *mut c_void,
        bound_port: *mut u16,
    ) -> *mut c_char;
    pub fn vx_dist_store_free(store: *mut c_void);
    pub fn vx_dist_gloo_new(
        store: *mut c_void,
        hostname: *const c_char,
        rank: i32,
        world: i32,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn vx_dist_group_free(group: *mut c_void);
    pub fn vx_dist_group_abort(group: *mut c_void) -> *mut c_char;
    pub fn vx_dist_broadcast(
        group: *mut c_void,
        ts: *const CTensor,
        n: usize,
        root: i32,
    ) -> *mut c_char;
    pub fn vx_dist_all_reduce(
        group: *mut c_void,
        ts: *const CTensor,
        n: usize,
        op: i32,
    ) -> *mut c_char;
    pub fn vx_dist_barrier(group: *mut c_void) -> *mut c_char;
    pub fn vx_dist_reducer_new(
        group: *mut c_void,
        params: *const CTensor,
        n: usize,
        bucket_bytes: i64,
        first_bucket_bytes: i64,
        out: *mut *mut c_void,
        buckets: *mut usize,
    ) -> *mut c_char;
    pub fn vx_dist_reducer_free(reducer: *mut c_void);
    pub fn vx_dist_reducer_prepare(reducer: *mut c_void) -> *mut c_char;
}
