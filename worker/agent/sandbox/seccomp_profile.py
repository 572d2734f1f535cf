"""The system calls a bwrap lease may make: Docker's default seccomp profile for a process without capabilities,
and stricter in a few places. Data only; worker.agent.sandbox.seccomp turns it into the kernel's filter.

Reference: Docker's default profile, moby's `profiles/seccomp/default.json` (the one `docker run` applies unless
told otherwise). Like it: everything not listed fails with EPERM; `clone` only without namespace flags; `clone3`
fails with ENOSYS (its flags sit in memory a filter cannot read, and ENOSYS makes the C library fall back to
`clone`); `personality` only with the harmless values; no AF_VSOCK sockets. A lease has no capabilities, so none
of the profile's capability-gated entries apply: mount, umount2, pivot_root, unshare, setns, bpf, perf_event_open,
kexec_*, init/finit/delete_module, open_by_handle_at, swapon/off, reboot, settimeofday, clock_settime, acct,
quotactl, lookup_dcookie, keyctl, add_key, request_key, userfaultfd, ... are simply not in the list.

Stricter than Docker: `ptrace`, `process_vm_readv` and `process_vm_writev` (Docker allows them on kernels from 4.8
on), and the io_uring calls (newer Docker profiles refuse them too: a large, often-patched kernel surface that
Ray does not use). Names this machine's libseccomp does not know are left out, i.e. refused.
"""

from __future__ import annotations

import errno

# Docker's unconditional allow list, less what DENIED_BEYOND_DOCKER names.
ALLOWED = tuple(
    """
    accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32 clock_adjtime
    clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
    clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1
    epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
    exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown
    fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
    fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd
    getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
    getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
    getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid
    getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill
    landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat listen
    listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier memfd_create
    memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr
    mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
    msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect
    open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
    ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
    pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
    rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
    rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
    sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
    sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop semtimedop_time64
    send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
    setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
    setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address
    setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
    sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
    sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime
    timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
    timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat
    utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
    """.split()
)

# Docker's per-architecture entries (Docker's "arches" names: the machine's as Python's platform.machine() says).
ALLOWED_ON_ARCH = {
    "x86_64": ("arch_prctl", "modify_ldt"),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"),
}

# What Docker allows and a lease may not (see the module's text).
DENIED_BEYOND_DOCKER = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)

# clone: allowed only when none of these flags is set (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET,
# Docker's mask 2114060288); threads and fork pass.
CLONE_NAMESPACE_FLAGS = 0x7E020000
CLONE_NEWUSER = 0x10000000
# personality: the values Docker allows (PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, the query 0xffffffff).
PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
AF_VSOCK = 40  # socket(): every family but this one
DENIED_ERRNO = errno.EPERM
CLONE3_ERRNO = errno.ENOSYS
