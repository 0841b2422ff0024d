// RBAC pattern compilation and matching. See rbac.h.
#include "filters/rbac.h"

namespace portcullis {

namespace {

constexpr size_t kMaxPatternBytes = 1024;
constexpr size_t kMaxMethodBytes = 20;

bool isLiteralChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '-': case '.': case '_': case '~': case '!': case '$': case '&': case '\'':
    case '(': case ')': case '+': case ',': case ';': case '=': case ':': case '@':
      return true;
    default:
      return false;
  }
}

bool isHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

// "." or ".." once every "%2e" is read as '.', also with path parameters
// (";" or "%3B" and what follows: "..;x" is ".." to Tomcat and Jetty).
bool isDotSegment(std::string_view seg) {
  for (size_t i = 0; i < seg.size(); ++i) {
    if (seg[i] == ';' || (seg[i] == '%' && i + 2 < seg.size() && seg[i + 1] == '3' && lower(seg[i + 2]) == 'b')) {
      seg = seg.substr(0, i);
      break;
    }
  }
  size_t dots = 0;
  for (size_t i = 0; i < seg.size();) {
    if (seg[i] == '.') {
      ++i;
    } else if (seg[i] == '%' && i + 2 < seg.size() && seg[i + 1] == '2' && lower(seg[i + 2]) == 'e') {
      i += 3;
    } else {
      return false;
    }
    ++dots;
  }
  return dots == 1 || dots == 2;
}

}  // namespace

const char* rbacPatternErrorName(RbacPatternError e) {
  switch (e) {
    case RbacPatternError::kOk: return "ok";
    case RbacPatternError::kEmpty: return "empty";
    case RbacPatternError::kTooLong: return "too_long";
    case RbacPatternError::kBadMethod: return "bad_method";
    case RbacPatternError::kBadSeparator: return "bad_separator";
    case RbacPatternError::kPathNotAbsolute: return "path_not_absolute";
    case RbacPatternError::kEmptySegment: return "empty_segment";
    case RbacPatternError::kDotSegment: return "dot_segment";
    case RbacPatternError::kBadCharacter: return "bad_character";
    case RbacPatternError::kWildcardNotLast: return "wildcard_not_last";
    case RbacPatternError::kBadPlaceholder: return "bad_placeholder";
  }
  return "unknown";
}

RbacPatternError RbacPolicy::compile(std::string_view text, Pattern* out) {
  if (text.empty()) return RbacPatternError::kEmpty;
  if (text.size() > kMaxPatternBytes) return RbacPatternError::kTooLong;
  size_t sp = 0;
  while (sp < text.size() && text[sp] >= 'A' && text[sp] <= 'Z') ++sp;
  if (sp == text.size()) return sp > kMaxMethodBytes ? RbacPatternError::kBadMethod : RbacPatternError::kBadSeparator;
  if (sp == 0 || sp > kMaxMethodBytes) return RbacPatternError::kBadMethod;
  if (text[sp] != ' ') {
    return (text[sp] == '\t') ? RbacPatternError::kBadSeparator : RbacPatternError::kBadMethod;
  }
  std::string_view method = text.substr(0, sp);
  std::string_view path = text.substr(sp + 1);
  if (path.empty()) return RbacPatternError::kPathNotAbsolute;
  if (path[0] == ' ' || path[0] == '\t') return RbacPatternError::kBadSeparator;
  if (path[0] != '/') return RbacPatternError::kPathNotAbsolute;
  Pattern p;
  p.method.assign(method);
  size_t pos = 1;
  for (;;) {
    size_t end = path.find('/', pos);
    bool last = end == std::string_view::npos;
    if (last) end = path.size();
    std::string_view seg = path.substr(pos, end - pos);
    if (seg.empty() && !last) return RbacPatternError::kEmptySegment;
    if (p.wildcard) return RbacPatternError::kWildcardNotLast;
    if (seg == "*") {
      if (!last) return RbacPatternError::kWildcardNotLast;
      p.wildcard = true;
    } else if (seg == "{account}") {
      p.segments.push_back({true, {}});
    } else {
      if (seg == "." || seg == "..") return RbacPatternError::kDotSegment;
      for (char c : seg) {
        if (c == '*') return RbacPatternError::kWildcardNotLast;
        if (c == '{' || c == '}') return RbacPatternError::kBadPlaceholder;
        if (!isLiteralChar(c)) return RbacPatternError::kBadCharacter;
      }
      p.segments.push_back({false, std::string(seg)});
    }
    if (last) break;
    pos = end + 1;
  }
  if (out) *out = std::move(p);
  return RbacPatternError::kOk;
}

RbacPatternError RbacPolicy::checkPattern(std::string_view pattern) { return compile(pattern, nullptr); }

std::shared_ptr<const RbacPolicy> RbacPolicy::build(const std::vector<RbacRoleConfig>& roles, std::string& error) {
  auto policy = std::shared_ptr<RbacPolicy>(new RbacPolicy());
  std::string problems;
  auto report = [&](const std::string& text) {
    if (!problems.empty()) problems.push_back('\n');
    problems += text;
  };
  for (size_t i = 0; i < roles.size(); ++i) {
    const RbacRoleConfig& rc = roles[i];
    std::string where = "role[" + std::to_string(i) + "] \"" + rc.name + "\"";
    if (!policy->index_.emplace(rc.name, static_cast<int32_t>(i)).second) report(where + ": duplicate role name");
    Role role;
    role.name = rc.name;
    for (size_t j = 0; j < rc.allow.size(); ++j) {
      Pattern p;
      RbacPatternError e = compile(rc.allow[j], &p);
      if (e != RbacPatternError::kOk) {
        report(where + ": allow[" + std::to_string(j) + "] \"" + rc.allow[j] + "\": " + rbacPatternErrorName(e));
        continue;
      }
      role.patterns.push_back(std::move(p));
    }
    policy->roles_.push_back(std::move(role));
  }
  if (!problems.empty()) {
    error = problems;
    return nullptr;
  }
  return policy;
}

bool RbacPolicy::isSafePath(std::string_view path) {
  if (path.empty() || path[0] != '/' || path.size() > 65536) return false;
  size_t seg_start = 1;
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      std::string_view seg = path.substr(seg_start, i - seg_start);
      if (seg.empty() && i != path.size()) return false;  // "//"
      if (isDotSegment(seg)) return false;
      seg_start = i + 1;
      continue;
    }
    unsigned char c = static_cast<unsigned char>(path[i]);
    if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#' || c == '\\') return false;
    if (c == '%') {
      if (i + 2 >= path.size() || !isHex(path[i + 1]) || !isHex(path[i + 2])) return false;
      char a = path[i + 1];
      char b = lower(path[i + 2]);
      if ((a == '2' && b == 'f') || (a == '5' && b == 'c') || (a == '0' && b == '0')) return false;
    }
  }
  return true;
}

bool RbacPolicy::matchPattern(const Pattern& p, std::string_view method, std::string_view path,
                              std::string_view account) {
  if (p.method.size() != method.size() || p.method != method) return false;
  size_t pos = 1;  // path[0] == '/'
  for (const Segment& s : p.segments) {
    if (pos > path.size()) return false;
    size_t end = path.find('/', pos);
    if (end == std::string_view::npos) end = path.size();
    std::string_view seg = path.substr(pos, end - pos);
    if (s.account) {
      if (account.empty() || seg != account) return false;
    } else if (seg != s.text) {
      return false;
    }
    pos = end + 1;
  }
  if (!p.wildcard) return pos == path.size() + 1;
  // One or more non-empty trailing segments; isSafePath() already refused "//".
  return pos < path.size() && path[pos] != '/';
}

int32_t RbacPolicy::roleIndex(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? -1 : it->second;
}

std::vector<int32_t> RbacPolicy::resolveRoles(const std::vector<std::string>& names) const {
  std::vector<int32_t> ids;
  for (const std::string& n : names) {
    int32_t i = roleIndex(n);
    if (i >= 0) ids.push_back(i);
  }
  return ids;
}

bool RbacPolicy::allowed(std::span<const int32_t> role_ids, std::string_view method, std::string_view path,
                         std::string_view account) const {
  if (role_ids.empty() || !isSafePath(path)) return false;
  for (int32_t id : role_ids) {
    if (id < 0 || static_cast<size_t>(id) >= roles_.size()) continue;
    for (const Pattern& p : roles_[static_cast<size_t>(id)].patterns) {
      if (matchPattern(p, method, path, account)) return true;
    }
  }
  return false;
}

bool RbacPolicy::allowedByName(const std::vector<std::string>& roles, std::string_view method, std::string_view path,
                               std::string_view account) const {
  std::vector<int32_t> ids = resolveRoles(roles);
  return allowed(ids, method, path, account);
}

}  // namespace portcullis
