// Fuzzes the request codec (proxy/http_codec.h) with arbitrary bytes delivered
// in two slices split at a fuzzer-chosen offset, honouring the codec contract:
// unconsumed bytes are passed again, parsing stops on kError, and a new message
// is started (startRequest) after every kMessageComplete. Every parsed target is
// run through normalizeTarget (proxy/target_normalize.h), and every parsed head's
// X-Forwarded-For through forwardedClientAddress (proxy/real_ip.h). Each input
// is parsed by both builds of llhttp's state machine (baseline and SSE4.2, see
// proxy/llhttp/dispatch.c) where the CPU has both, and every status, offset,
// head and error must be the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/arena.h"
#include "proxy/http_codec.h"
#include "proxy/cidr.h"
#include "proxy/http_message.h"
#include "proxy/real_ip.h"
#include "proxy/target_normalize.h"
#include "proxy/llhttp/simd.h"

using namespace portcullis;

namespace {

struct CountingSink : BodySink {
  uint64_t bytes = 0;
  void onBodyData(std::string_view data) override {
    // Touch every byte so ASan checks the slice really lies in the input.
    for (char c : data) bytes += static_cast<unsigned char>(c) & 1;
    bytes += data.size();
  }
};

void checkTarget(std::string_view target) {
  std::vector<char> out(target.size() + 1);
  NormalizedTarget n = normalizeTarget(target, out.data(), target.size());
  if (n.ok()) {
    if (n.path_len > target.size()) abort();  // documented: never longer than the input
    if (!n.asterisk && (n.path_len == 0 || out[0] != '/')) abort();
  } else if (n.error_offset > target.size()) {
    abort();
  }
}

// Whatever the header says, the chosen client is a plain address: it parses
// again and prints the same.
void checkRealIp(const RequestHead& head) {
  static const std::vector<Cidr> trusted = [] {
    std::vector<Cidr> nets;
    for (const char* t : {"10.0.0.0/8", "127.0.0.1", "2001:db8::/32"}) {
      Cidr c;
      if (!Cidr::parse(t, c)) abort();
      nets.push_back(c);
    }
    return nets;
  }();
  IpText out;
  if (!forwardedClientAddress(head.headers, trusted, out)) return;
  IpAddress a;
  char again[INET6_ADDRSTRLEN];
  if (out.len == 0 || !IpAddress::parse(out.view(), a) || std::string_view(again, a.format(again)) != out.view())
    abort();
}

// Parses `input` delivered in two slices and returns what the codec reported
// (statuses, offsets, heads, errors, body byte count) for comparing builds.
std::string parse(const std::string& input, size_t split) {
  HttpCodec codec(HTTP_REQUEST, CodecLimits{});
  CountingSink sink;
  codec.setBodySink(&sink);
  Arena arena;
  RequestHead head;
  codec.startRequest(&head, &arena);
  std::string trace;

  // The connection keeps unconsumed bytes in one buffer: emulate that by
  // appending each slice to a pending buffer and feeding from it. The buffer
  // is not reallocated while views into it are live within one slice.
  std::string pending;
  pending.reserve(input.size());  // never reallocates: views into it stay valid
  const std::string_view slices[2] = {std::string_view(input).substr(0, split),
                                       std::string_view(input).substr(split)};
  bool done = false;
  int messages = 0;
  size_t off = 0;  // bytes of `pending` consumed so far
  for (int s = 0; s < 2 && !done; ++s) {
    pending.append(slices[s]);
    while (!done) {
      size_t consumed = 0;
      HttpCodec::Status st = codec.execute(pending.data() + off, pending.size() - off, consumed);
      if (consumed > pending.size() - off) abort();
      off += consumed;
      trace += std::to_string(static_cast<int>(st)) + "@" + std::to_string(off) + " ";
      switch (st) {
        case HttpCodec::Status::kNeedMore:
          if (off != pending.size()) abort();  // kNeedMore means all input consumed
          break;
        case HttpCodec::Status::kHeadComplete:
          checkTarget(head.target);
          checkRealIp(head);
          trace.append(head.method_name).append(" ").append(head.target).append("\n");
          for (const Header& h : head.headers) {
            sink.bytes += h.name.size() + h.value.size();
            trace.append(h.name).append(": ").append(h.value).append("\n");
          }
          continue;
        case HttpCodec::Status::kMessageComplete:
          if (!codec.headDone()) checkTarget(head.target);
          trace += "body " + std::to_string(sink.bytes) + "\n";
          if (++messages > 1000) done = true;
          arena.reset();
          codec.startRequest(&head, &arena);
          continue;
        case HttpCodec::Status::kError:
          if (codec.error() == CodecError::kNone) abort();
          if (codec.errorReason() == nullptr) abort();
          trace += "error " + std::to_string(static_cast<int>(codec.error())) + " " + codec.errorReason();
          done = true;
          break;
      }
      break;
    }
    // Unconsumed bytes stay at pending[off..] and are passed again together
    // with the next slice.
  }
  if (!done) trace += "finish " + std::to_string(static_cast<int>(codec.finish()));
  return trace;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  size_t split = data[0];
  std::string input(reinterpret_cast<const char*>(data + 1), size - 1);
  if (split > input.size()) split = input.size();

  static const bool have_simd = portcullis_llhttp_use_simd(1) == 1;
  if (!have_simd) {
    (void)parse(input, split);
    return 0;
  }
  portcullis_llhttp_use_simd(0);
  const std::string baseline = parse(input, split);
  portcullis_llhttp_use_simd(1);
  if (parse(input, split) != baseline) abort();  // the two builds disagree
  return 0;
}
