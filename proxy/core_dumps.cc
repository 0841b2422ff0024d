#include "proxy/core_dumps.h"

#include <sys/prctl.h>

#include <cstdlib>
#include <cstring>

namespace portcullis {

bool disableCoreDumps() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): called first thing in main(), before any thread exists
  const char* opt_out = std::getenv("PORTCULLIS_ALLOW_CORE_DUMPS");
  if (opt_out != nullptr && std::strcmp(opt_out, "1") == 0) return true;
  return ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0;
}

}  // namespace portcullis
