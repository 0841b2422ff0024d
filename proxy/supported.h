// Checks beyond the config file itself, shared by `portcullis -t` and startup.
#pragma once

#include <string>

#include "proxy/config.h"

namespace portcullis {

// Loads what the config names, exactly as the proxy would at start: the TLS
// certificates and keys (key file modes included) and the token store with
// the roles. Returns false with the first problem in `error`.
bool checkNamedFiles(const Config& config, std::string& error);

}  // namespace portcullis
