// disableCoreDumps(): non-dumpable unless PORTCULLIS_ALLOW_CORE_DUMPS=1.
// Each case runs in a child process, whose dumpable flag it may change.
#include "proxy/core_dumps.h"

#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

namespace portcullis {
namespace {

// The child's PR_GET_DUMPABLE after disableCoreDumps() with `env` set (or
// PORTCULLIS_ALLOW_CORE_DUMPS unset when null); -1 on failure.
int dumpableAfter(const char* env) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (env != nullptr) {
      ::setenv("PORTCULLIS_ALLOW_CORE_DUMPS", env, 1);
    } else {
      ::unsetenv("PORTCULLIS_ALLOW_CORE_DUMPS");
    }
    if (!disableCoreDumps()) ::_exit(100);
    ::_exit(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
  }
  int ws = 0;
  if (pid < 0 || ::waitpid(pid, &ws, 0) != pid || !WIFEXITED(ws)) return -1;
  return WEXITSTATUS(ws);
}

TEST(CoreDumps, DisabledUnlessOptedOut) {
  EXPECT_EQ(dumpableAfter(nullptr), 0);
  EXPECT_EQ(dumpableAfter("0"), 0);
  EXPECT_EQ(dumpableAfter("1"), 1);
}

}  // namespace
}  // namespace portcullis
