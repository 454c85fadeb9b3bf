//! The `krab` binary: builds the runtime and hands over to `cli::main`.

/// glibc's allocator, told to keep less: large buffers (a LIST's response) are mapped and
/// unmapped rather than left in the heap (a fixed mmap threshold stops glibc raising it after
/// each large free), and a few arenas rather than eight per core hold freed memory.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    krab::cli::main()
}
