// Codec micro-benchmarks: requests parsed per second, header lookup, and the
// serialisation of an edited head for the next hop.
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>

#include "proxy/arena.h"
#include "proxy/http_codec.h"
#include "proxy/http_message.h"
#include "proxy/llhttp/simd.h"

namespace {

using namespace portcullis;

// A typical API call as sent by a browser-less client (≈ 330 bytes).
constexpr std::string_view kRequest =
    "GET /v1/accounts/acme/orders?limit=50&cursor=abc123 HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: example-sdk/2.3.1 (linux; x86_64)\r\n"
    "Accept: application/json\r\n"
    "Accept-Encoding: gzip, br\r\n"
    "Authorization: Bearer pct_abcdefghijkl_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG\r\n"
    "X-Forwarded-For: 10.0.0.1\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 64\r\n"
    "Server: nginx/1.22.1\r\n"
    "Date: Fri, 04 Dec 2026 16:40:47 GMT\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

// Arg 0: llhttp's baseline build; arg 1: its SSE4.2 build (the one the proxy
// runs on such a CPU). Skipped when this CPU or build has no SSE4.2 build.
bool selectLlhttpBuild(benchmark::State& state) {
  const bool want = state.range(0) != 0;
  if (portcullis_llhttp_use_simd(want ? 1 : 0) != (want ? 1 : 0)) {
    state.SkipWithError("no SSE4.2 build of llhttp on this CPU");
    return false;
  }
  state.SetLabel(want ? "llhttp sse4.2" : "llhttp baseline");
  return true;
}

struct NullSink : BodySink {
  void onBodyData(std::string_view d) override { benchmark::DoNotOptimize(d.data()); }
};

void BM_ParseRequestHead(benchmark::State& state) {
  if (!selectLlhttpBuild(state)) return;
  HttpCodec codec(HTTP_REQUEST, CodecLimits{});
  RequestHead head;
  Arena arena;
  for (auto _ : state) {
    codec.startRequest(&head, &arena);
    size_t consumed = 0;
    codec.execute(kRequest.data(), kRequest.size(), consumed);
    size_t c2 = 0;
    codec.execute(kRequest.data() + consumed, 0, c2);  // reach message end
    benchmark::DoNotOptimize(head.headers.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kRequest.size()));
}
BENCHMARK(BM_ParseRequestHead)->Arg(0)->Arg(1);

void BM_ParseResponseHead(benchmark::State& state) {
  if (!selectLlhttpBuild(state)) return;
  HttpCodec codec(HTTP_RESPONSE, CodecLimits{});
  ResponseHead head;
  Arena arena;
  NullSink sink;
  codec.setBodySink(&sink);
  std::string msg(kResponse);
  msg.append(64, 'x');
  for (auto _ : state) {
    codec.startResponse(&head, &arena, false);
    size_t off = 0, consumed = 0;
    while (off < msg.size()) {
      auto st = codec.execute(msg.data() + off, msg.size() - off, consumed);
      off += consumed;
      if (st == HttpCodec::Status::kMessageComplete) break;
    }
    benchmark::DoNotOptimize(head.status);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ParseResponseHead)->Arg(0)->Arg(1);

void BM_SerializeRequest(benchmark::State& state) {
  HttpCodec codec(HTTP_REQUEST, CodecLimits{});
  RequestHead head;
  Arena arena;
  codec.startRequest(&head, &arena);
  size_t consumed = 0;
  codec.execute(kRequest.data(), kRequest.size(), consumed);
  head.remove(HeaderId::kXForwardedFor);
  head.remove(HeaderId::kAuthorization);
  head.add("X-Request-Id", "0123456789abcdef0123456789abcdef");
  head.add("X-Forwarded-For", "127.0.0.1");
  head.add("X-Forwarded-Proto", "https");
  std::string out;
  out.reserve(1024);
  for (auto _ : state) {
    out.clear();
    serializeRequest(head, false, false, 0, out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SerializeRequest);

void BM_LookupHeader(benchmark::State& state) {
  const std::string_view names[] = {"Host", "User-Agent", "Accept", "Content-Length", "X-Portcullis-Account",
                                    "Authorization", "x-custom-thing", "Transfer-Encoding"};
  for (auto _ : state) {
    for (std::string_view n : names) benchmark::DoNotOptimize(lookupHeader(n));
  }
  state.SetItemsProcessed(state.iterations() * 8);
}
BENCHMARK(BM_LookupHeader);

void BM_ChunkedBody64K(benchmark::State& state) {
  std::string msg = "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 16; ++i) {
    msg += "1000\r\n";
    msg.append(4096, 'a');
    msg += "\r\n";
  }
  msg += "0\r\n\r\n";
  HttpCodec codec(HTTP_REQUEST, CodecLimits{});
  RequestHead head;
  Arena arena;
  NullSink sink;
  codec.setBodySink(&sink);
  for (auto _ : state) {
    codec.startRequest(&head, &arena);
    size_t off = 0, consumed = 0;
    while (true) {
      auto st = codec.execute(msg.data() + off, msg.size() - off, consumed);
      off += consumed;
      if (st == HttpCodec::Status::kMessageComplete || st == HttpCodec::Status::kError) break;
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(msg.size()));
}
BENCHMARK(BM_ChunkedBody64K);

}  // namespace

BENCHMARK_MAIN();
