//! The `pause` executable krab puts in its pause image: the process that holds a pod
//! sandbox's namespaces. Hand-assembled static ELF64 programs for x86_64 and aarch64.
//!
//! Behaviour (upstream `pause.c`, but with `sigtimedwait` instead of signal handlers):
//!
//! 1. `rt_sigprocmask(SIG_BLOCK, {SIGINT, SIGTERM, SIGCHLD}, NULL, 8)`;
//! 2. loop: `sig = rt_sigtimedwait({SIGINT, SIGTERM, SIGCHLD}, NULL, NULL, 8)` (no timeout,
//!    i.e. `sigwaitinfo`), sleeping in the kernel with no CPU use;
//!    - `SIGCHLD`: `while wait4(-1, NULL, WNOHANG, NULL) > 0 {}` reaps every exited child
//!      (as PID 1 of a pod's PID namespace, orphans are re-parented to pause);
//!    - `SIGINT` / `SIGTERM`: `exit_group(0)`;
//!    - anything else (e.g. `-EINTR` after a stop/continue): wait again.
//!
//! Blocking rather than leaving the default disposition matters for PID 1 of a namespace: the
//! kernel drops signals a namespace init has not handled (`SIGNAL_UNKILLABLE`), but never
//! drops a blocked signal, so `SIGTERM` from the runtime still arrives. Other signals keep
//! their default action (which a namespace init never gets); `SIGKILL` from the parent
//! namespace always works.
//!
//! Layout, both arches: ELF header (64 bytes) at 0, one program header (56 bytes) at 64, code
//! at 120 = entry 0x400078, and the 8-byte `sigset_t` (bit `sig - 1` for SIGINT 2, SIGTERM 15,
//! SIGCHLD 17: 0x14002) at the end, read by the kernel straight from the R+X segment. The
//! single PT_LOAD maps the whole file at 0x400000. No section headers, no stack use, no libc.
//! x86_64 syscalls: rt_sigprocmask 14, rt_sigtimedwait 128, wait4 61, exit_group 231 (number
//! in eax, args rdi, rsi, rdx, r10). aarch64: 135, 137, 260, 94 (number in x8, args x0..x3).
//! Checked against GNU as/objdump, run natively (x86_64) and under qemu-aarch64 (aarch64).

/// x86_64 `pause`, 232 bytes. x86 branch displacements count from the next instruction.
#[rustfmt::skip]
pub const PAUSE_X86_64: &[u8] = &[
    // ELF header (64 bytes)
    0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00,  // "\x7fELF", ELFCLASS64, LSB, version 1, SysV
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_ident padding
    0x02, 0x00, 0x3e, 0x00, 0x01, 0x00, 0x00, 0x00,  // ET_EXEC, EM_X86_64 = 62, e_version 1
    0x78, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_entry 0x400078 (file offset 120)
    0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_phoff 64
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_shoff 0 (no section headers)
    0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x38, 0x00,  // e_flags 0, e_ehsize 64, e_phentsize 56
    0x01, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_phnum 1, e_shentsize 64, no sections
    // Program header (56 bytes): one PT_LOAD mapping the whole file R+X at 0x400000
    0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,  // p_type PT_LOAD, p_flags PF_R|PF_X
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_offset 0
    0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_vaddr 0x400000
    0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_paddr 0x400000
    0xe8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_filesz 232 (whole file)
    0xe8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_memsz 232
    0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_align 0x1000
    // _start:  block SIGINT, SIGTERM, SIGCHLD (pause.c leaves them to handlers instead)
    0x31, 0xff,                                // 400078 xor  edi, edi          ; how = SIG_BLOCK
    0x48, 0x8d, 0x35, 0x5f, 0x00, 0x00, 0x00,  // 40007a lea  rsi, [rip+0x5f]   ; set = &SET
    0x31, 0xd2,                                // 400081 xor  edx, edx          ; oldset = NULL
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00,        // 400083 mov  r10d, 8           ; sigsetsize = 8
    0xb8, 0x0e, 0x00, 0x00, 0x00,              // 400089 mov  eax, 14           ; rt_sigprocmask
    0x0f, 0x05,                                // 40008e syscall
    // wait:  (0x400090) sleep until one of SET is pending, take it
    0x48, 0x8d, 0x3d, 0x49, 0x00, 0x00, 0x00,  // 400090 lea  rdi, [rip+0x49]   ; uthese = &SET
    0x31, 0xf6,                                // 400097 xor  esi, esi          ; uinfo = NULL
    0x31, 0xd2,                                // 400099 xor  edx, edx          ; timeout = NULL
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00,        // 40009b mov  r10d, 8           ; sigsetsize = 8
    0xb8, 0x80, 0x00, 0x00, 0x00,              // 4000a1 mov  eax, 128          ; rt_sigtimedwait
    0x0f, 0x05,                                // 4000a6 syscall                ; eax = signo/-errno
    0x83, 0xf8, 0x11,                          // 4000a8 cmp  eax, 17
    0x74, 0x13,                                // 4000ab je   reap (+0x13)      ; SIGCHLD
    0x83, 0xf8, 0x02,                          // 4000ad cmp  eax, 2
    0x74, 0x05,                                // 4000b0 je   exit (+0x05)      ; SIGINT
    0x83, 0xf8, 0x0f,                          // 4000b2 cmp  eax, 15
    0x75, 0xd9,                                // 4000b5 jne  wait (-0x27)      ; other: wait again
    // exit:  (0x4000b7)
    0x31, 0xff,                                // 4000b7 xor  edi, edi          ; status = 0
    0xb8, 0xe7, 0x00, 0x00, 0x00,              // 4000b9 mov  eax, 231          ; exit_group
    0x0f, 0x05,                                // 4000be syscall
    // reap:  (0x4000c0) wait4(-1, NULL, WNOHANG, NULL) until it returns <= 0
    0xbf, 0xff, 0xff, 0xff, 0xff,              // 4000c0 mov  edi, -1           ; pid = -1 (any)
    0x31, 0xf6,                                // 4000c5 xor  esi, esi          ; wstatus = NULL
    0xba, 0x01, 0x00, 0x00, 0x00,              // 4000c7 mov  edx, 1            ; WNOHANG
    0x45, 0x31, 0xd2,                          // 4000cc xor  r10d, r10d        ; rusage = NULL
    0xb8, 0x3d, 0x00, 0x00, 0x00,              // 4000cf mov  eax, 61           ; wait4
    0x0f, 0x05,                                // 4000d4 syscall
    0x85, 0xc0,                                // 4000d6 test eax, eax
    0x7f, 0xe6,                                // 4000d8 jg   reap (-0x1a)      ; reaped one
    0xeb, 0xb4,                                // 4000da jmp  wait (-0x4c)      ; 0 or -ECHILD
    0x90, 0x90, 0x90, 0x90,                    // 4000dc nop x4                 ; align SET to 8
    // SET:  (0x4000e0) sigset_t, bit (sig - 1): SIGINT | SIGTERM | SIGCHLD
    0x02, 0x40, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // 4000e0 .quad 0x14002
];

/// aarch64 `pause`, 248 bytes. Each instruction is one little-endian 32-bit word (shown
/// big-endian in the listing); `adr` and branch offsets count from the instruction itself.
#[rustfmt::skip]
pub const PAUSE_AARCH64: &[u8] = &[
    // ELF header (64 bytes)
    0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00,  // "\x7fELF", ELFCLASS64, LSB, version 1, SysV
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_ident padding
    0x02, 0x00, 0xb7, 0x00, 0x01, 0x00, 0x00, 0x00,  // ET_EXEC, EM_AARCH64 = 183, e_version 1
    0x78, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_entry 0x400078 (file offset 120)
    0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_phoff 64
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_shoff 0 (no section headers)
    0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x38, 0x00,  // e_flags 0, e_ehsize 64, e_phentsize 56
    0x01, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,  // e_phnum 1, e_shentsize 64, no sections
    // Program header (56 bytes): one PT_LOAD mapping the whole file R+X at 0x400000
    0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,  // p_type PT_LOAD, p_flags PF_R|PF_X
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_offset 0
    0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_vaddr 0x400000
    0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_paddr 0x400000
    0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_filesz 248 (whole file)
    0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_memsz 248
    0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,  // p_align 0x10000
    // _start:  block SIGINT, SIGTERM, SIGCHLD (pause.c leaves them to handlers instead)
    0x00, 0x00, 0x80, 0xd2,  // 400078 d2800000 mov x0, #0     // how = SIG_BLOCK
    0xa1, 0x03, 0x00, 0x10,  // 40007c 100003a1 adr x1, SET    // set = &SET (pc + 0x74 = 0x4000f0)
    0x02, 0x00, 0x80, 0xd2,  // 400080 d2800002 mov x2, #0     // oldset = NULL
    0x03, 0x01, 0x80, 0xd2,  // 400084 d2800103 mov x3, #8     // sigsetsize = 8
    0xe8, 0x10, 0x80, 0xd2,  // 400088 d28010e8 mov x8, #135   // rt_sigprocmask
    0x01, 0x00, 0x00, 0xd4,  // 40008c d4000001 svc #0
    // wait:  (0x400090) sleep until one of SET is pending, take it
    0x00, 0x03, 0x00, 0x10,  // 400090 10000300 adr x0, SET    // uthese = &SET (pc + 0x60)
    0x01, 0x00, 0x80, 0xd2,  // 400094 d2800001 mov x1, #0     // uinfo = NULL
    0x02, 0x00, 0x80, 0xd2,  // 400098 d2800002 mov x2, #0     // timeout = NULL
    0x03, 0x01, 0x80, 0xd2,  // 40009c d2800103 mov x3, #8     // sigsetsize = 8
    0x28, 0x11, 0x80, 0xd2,  // 4000a0 d2801128 mov x8, #137   // rt_sigtimedwait
    0x01, 0x00, 0x00, 0xd4,  // 4000a4 d4000001 svc #0         // x0 = signo/-errno
    0x1f, 0x44, 0x00, 0xf1,  // 4000a8 f100441f cmp x0, #17
    0x00, 0x01, 0x00, 0x54,  // 4000ac 54000100 b.eq reap      // SIGCHLD (+0x20)
    0x1f, 0x08, 0x00, 0xf1,  // 4000b0 f100081f cmp x0, #2
    0x60, 0x00, 0x00, 0x54,  // 4000b4 54000060 b.eq exit      // SIGINT (+0x0c)
    0x1f, 0x3c, 0x00, 0xf1,  // 4000b8 f1003c1f cmp x0, #15
    0xa1, 0xfe, 0xff, 0x54,  // 4000bc 54fffea1 b.ne wait      // other: wait again (-0x2c)
    // exit:  (0x4000c0)
    0x00, 0x00, 0x80, 0xd2,  // 4000c0 d2800000 mov x0, #0     // status = 0
    0xc8, 0x0b, 0x80, 0xd2,  // 4000c4 d2800bc8 mov x8, #94    // exit_group
    0x01, 0x00, 0x00, 0xd4,  // 4000c8 d4000001 svc #0
    // reap:  (0x4000cc) wait4(-1, NULL, WNOHANG, NULL) until it returns <= 0
    0x00, 0x00, 0x80, 0x92,  // 4000cc 92800000 mov x0, #-1    // pid = -1 (any) = movn x0, #0
    0x01, 0x00, 0x80, 0xd2,  // 4000d0 d2800001 mov x1, #0     // wstatus = NULL
    0x22, 0x00, 0x80, 0xd2,  // 4000d4 d2800022 mov x2, #1     // options = WNOHANG
    0x03, 0x00, 0x80, 0xd2,  // 4000d8 d2800003 mov x3, #0     // rusage = NULL
    0x88, 0x20, 0x80, 0xd2,  // 4000dc d2802088 mov x8, #260   // wait4
    0x01, 0x00, 0x00, 0xd4,  // 4000e0 d4000001 svc #0
    0x1f, 0x00, 0x00, 0xf1,  // 4000e4 f100001f cmp x0, #0
    0x2c, 0xff, 0xff, 0x54,  // 4000e8 54ffff2c b.gt reap      // reaped one: try again (-0x1c)
    0xe9, 0xff, 0xff, 0x17,  // 4000ec 17ffffe9 b wait         // 0 or -ECHILD (-0x5c)
    // SET:  (0x4000f0) sigset_t, bit (sig - 1): SIGINT | SIGTERM | SIGCHLD
    0x02, 0x40, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // 4000f0 .quad 0x14002
];

/// The pause executable for a Rust target architecture name (`std::env::consts::ARCH`).
pub fn for_arch(arch: &str) -> Option<&'static [u8]> {
    match arch {
        "x86_64" => Some(PAUSE_X86_64),
        "aarch64" => Some(PAUSE_AARCH64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn check_elf(bin: &[u8], machine: u16) {
        assert!(bin.len() < 300, "{} bytes", bin.len());
        assert_eq!(&bin[..4], b"\x7fELF");
        assert_eq!(
            (bin[4], bin[5], bin[6]),
            (2, 1, 1),
            "64-bit, LSB, version 1"
        );
        assert_eq!(u16_at(bin, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(bin, 18), machine, "e_machine");
        assert_eq!(u32_at(bin, 20), 1, "e_version");
        let entry = u64_at(bin, 24);
        let phoff = u64_at(bin, 32) as usize;
        assert_eq!(u16_at(bin, 52), 64, "e_ehsize");
        assert_eq!(
            (u16_at(bin, 54), u16_at(bin, 56)),
            (56, 1),
            "phentsize, phnum"
        );
        assert_eq!(u16_at(bin, 60), 0, "no section headers");
        let ph = &bin[phoff..phoff + 56];
        assert_eq!(u32_at(ph, 0), 1, "PT_LOAD");
        assert_eq!(u32_at(ph, 4), 5, "PF_R | PF_X");
        let (offset, vaddr) = (u64_at(ph, 8), u64_at(ph, 16));
        let (filesz, memsz) = (u64_at(ph, 32), u64_at(ph, 40));
        assert_eq!(offset, 0);
        assert_eq!(filesz, bin.len() as u64, "p_filesz covers the whole file");
        assert_eq!(memsz, filesz);
        assert_eq!(vaddr % 0x10000, 0, "page-aligned for 4K..64K pages");
        let code = vaddr + (phoff + 56) as u64;
        assert!(entry >= code && entry < vaddr + filesz, "entry {entry:#x}");
        let sigset = (1 << (2 - 1)) | (1 << (15 - 1)) | (1 << (17 - 1));
        assert_eq!(
            u64_at(bin, bin.len() - 8),
            sigset,
            "SIGINT | SIGTERM | SIGCHLD"
        );
    }

    #[test]
    fn x86_64_elf_is_well_formed() {
        check_elf(PAUSE_X86_64, 62);
    }

    #[test]
    fn aarch64_elf_is_well_formed() {
        check_elf(PAUSE_AARCH64, 183);
        assert_eq!((PAUSE_AARCH64.len() - 120) % 4, 0, "whole instructions");
    }

    #[test]
    fn for_arch_takes_rust_arch_names() {
        assert_eq!(for_arch("x86_64"), Some(PAUSE_X86_64));
        assert_eq!(for_arch("aarch64"), Some(PAUSE_AARCH64));
        assert_eq!(for_arch("riscv64"), None);
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert!(for_arch(std::env::consts::ARCH).is_some());
        }
    }

    /// Runs the real binary: it must keep sleeping, then exit 0 on `signal` within 2 s.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn runs_until(signal: libc::c_int) {
        use std::os::unix::fs::PermissionsExt;
        use std::process::{Command, Stdio};
        use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("krab-pause-test-{}-{signal}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, PAUSE_X86_64).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Another test thread forking while our write fd was open can make exec fail with
        // ETXTBSY for a moment; retry briefly.
        let mut tries = 0;
        let spawned = loop {
            let r = Command::new(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn();
            match r {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other,
            }
        };
        let _ = std::fs::remove_file(&path);
        let mut child = spawned.expect("spawning pause");

        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pause exited on its own: {status}");
        }
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{status} after signal {signal}");
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pause still running 2 s after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn x86_64_pause_sleeps_then_exits_0_on_sigterm() {
        runs_until(libc::SIGTERM);
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn x86_64_pause_exits_0_on_sigint() {
        runs_until(libc::SIGINT);
    }
}
