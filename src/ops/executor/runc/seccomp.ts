/**
 * The seccomp filter of sandboxed steps. Docker's default profile is an allowlist of ~350 calls
 * maintained with the kernel; loom keeps a short denylist of what a build step has no business
 * calling and that the default capabilities do not already stop: kernel keyrings, BPF, perf,
 * module and kexec loading, new mount API calls, clock setting, handle-based opens (the
 * "shocker" escape), userfaultfd, and creating user namespaces (the way around every capability
 * check). Unknown names on an architecture are skipped by runc. `security=insecure` has no filter.
 */
const EPERM = 1;
const ENOSYS = 38;
const CLONE_NEWUSER = 0x10000000;

const DENIED = [
  'acct', 'add_key', 'bpf', 'clock_adjtime', 'clock_settime', 'clock_settime64', 'create_module', 'delete_module',
  'finit_module', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'get_kernel_syms', 'init_module', 'ioperm', 'iopl',
  'kexec_file_load', 'kexec_load', 'keyctl', 'lookup_dcookie', 'mount', 'mount_setattr', 'move_mount',
  'name_to_handle_at', 'nfsservctl', 'open_by_handle_at', 'open_tree', 'perf_event_open', 'pivot_root',
  'query_module', 'quotactl', 'reboot', 'request_key', 'setns', 'settimeofday', 'stime', 'swapoff', 'swapon',
  'sysfs', '_sysctl', 'umount', 'umount2', 'uselib', 'userfaultfd', 'ustat', 'vm86', 'vm86old',
];

export function seccompProfile(hostArch: string): Record<string, unknown> {
  const architectures =
    hostArch === 'arm64'
      ? ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']
      : hostArch === 'amd64'
        ? ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']
        : [];
  const newUser = [{ index: 0, value: CLONE_NEWUSER, valueTwo: CLONE_NEWUSER, op: 'SCMP_CMP_MASKED_EQ' }];
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures,
    syscalls: [
      { names: DENIED, action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      // glibc falls back to clone() when clone3 is missing; clone's flags can then be checked.
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
      // clone's flags are argument 0 on x86_64 and arm64 alike; s390 swaps them (not a target here).
      { names: ['clone', 'unshare'], action: 'SCMP_ACT_ERRNO', errnoRet: EPERM, args: newUser },
    ],
  };
}
