// Keeps master keys and token secrets out of core dumps (SECURITY.md): both
// binaries (portcullis, portcullisctl) call disableCoreDumps() first thing in
// main(). PR_SET_DUMPABLE 0 means no core file, no ptrace attach by other
// processes of the same user, and /proc/<pid> files owned by root.
#pragma once

namespace portcullis {

// Marks the process non-dumpable unless the environment has
// PORTCULLIS_ALLOW_CORE_DUMPS=1 (debugging a crash). Returns false, errno
// set, only when prctl failed; the caller warns and carries on.
bool disableCoreDumps();

}  // namespace portcullis
