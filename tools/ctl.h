// Command registry of portcullisctl. A command group defines, in its own
// ctl_<group>.cc, a static CommandRegistration naming its top-level word and
// entry point; main() dispatches on argv[1]. Entry points get the remaining
// arguments, print errors as one line on stderr, and return the exit status.
#pragma once

#include <string>
#include <vector>

namespace portcullis::ctl {

using Args = std::vector<std::string>;

struct Command {
  const char* name;
  int (*run)(const Args& args);
};

inline std::vector<Command>& commands() {
  static std::vector<Command> list;
  return list;
}

// Constructed during static initialisation, where no handler could catch an
// exception: noexcept says that running out of memory there ends the process.
struct CommandRegistration {
  CommandRegistration(const char* name, int (*run)(const Args&)) noexcept { commands().push_back({name, run}); }
};

}  // namespace portcullis::ctl
