// HttpCodec, the serialisers of http_message.h and the header helpers of
// headers.h. The central property: however the bytes of a stream are split
// into reads, the codec reports the same heads, bodies and errors. It is
// checked for two ways of feeding, both at every split offset and byte by byte:
//
//  - contiguous: one buffer that grows in place (what Connection does: reads
//    are appended to one buffer and the parser is re-run from where it
//    stopped). All views must point into that buffer; nothing is copied.
//  - pieces: every read in its own allocation. A name, value or target that
//    straddles two reads is then copied into the arena.
//
// On a CPU with SSE4.2 every split check runs under both builds of llhttp's
// state machine (baseline and SSE4.2, proxy/llhttp/dispatch.c), which must
// report the same events; HttpCodecSimdTest compares them byte value by byte
// value where the SIMD span matching reads 16 bytes at once.
#include "proxy/http_codec.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "proxy/headers.h"
#include "proxy/http_message.h"
#include "proxy/llhttp/simd.h"

namespace portcullis {
namespace {

const char* errorName(CodecError e) {
  switch (e) {
    case CodecError::kNone: return "none";
    case CodecError::kMalformed: return "malformed";
    case CodecError::kUriTooLong: return "uri_too_long";
    case CodecError::kHeadersTooLarge: return "headers_too_large";
    case CodecError::kBadVersion: return "bad_version";
  }
  return "?";
}

void describeCommon(const MessageHead& h, std::ostringstream& o) {
  o << " HTTP/" << int(h.http_major) << "." << int(h.http_minor) << " chunked=" << h.chunked
    << " has_cl=" << h.has_content_length << " cl=" << h.content_length << " keep_alive=" << h.keep_alive << "\n";
  for (const Header& x : h.headers) {
    o << "  [" << x.name << "]: [" << x.value << "] id=" << int(x.id) << (x.removed ? " removed" : "") << "\n";
  }
}

std::string describe(const RequestHead& h) {
  std::ostringstream o;
  o << h.method_name << " (" << int(h.method) << ") target=[" << h.target << "] path=[" << h.path << "] query=["
    << h.query << "] expect_continue=" << h.expect_continue;
  describeCommon(h, o);
  return o.str();
}

std::string describe(const ResponseHead& h) {
  std::ostringstream o;
  o << h.status << " [" << h.reason << "]";
  describeCommon(h, o);
  return o.str();
}

class Collector : public BodySink {
 public:
  void onBodyData(std::string_view d) override {
    data.append(d);
    ++calls;
  }
  std::string take() {
    std::string out;
    out.swap(data);
    return out;
  }
  std::string data;
  int calls = 0;
};

// Drives one codec the way Connection does and records what it reports as a
// list of events, so that two feedings can be compared as strings.
class Driver {
 public:
  // For responses, `head_requests[i]` says whether response i answers a HEAD.
  Driver(llhttp_type_t type, CodecLimits limits, std::vector<bool> head_requests = {})
      : type_(type), codec_(type, limits), head_requests_(std::move(head_requests)) {
    codec_.setBodySink(&sink_);
    start();
  }

  // Parses data[pos, len) until the codec needs more input or fails; `pos`
  // advances by what was consumed (unconsumed bytes are passed again).
  void run(const char* data, size_t len, size_t& pos) {
    bool poke = false;
    while (!failed_ && (pos < len || poke)) {
      poke = false;
      size_t consumed = 0;
      HttpCodec::Status st = codec_.execute(data + pos, len - pos, consumed);
      ASSERT_LE(consumed, len - pos);
      pos += consumed;
      switch (st) {
        case HttpCodec::Status::kNeedMore:
          EXPECT_EQ(pos, len) << "kNeedMore must consume all input";
          return;
        case HttpCodec::Status::kHeadComplete:
          EXPECT_TRUE(codec_.headDone());
          EXPECT_TRUE(codec_.inMessage());
          EXPECT_FALSE(head_seen_) << "two kHeadComplete for one message";
          head_seen_ = true;
          head_text_ = describeHead();
          events_.push_back("head " + head_text_);
          // A body-less message ends without consuming input: run once more
          // even if nothing is left (Connection does the same).
          poke = true;
          break;
        case HttpCodec::Status::kMessageComplete: {
          EXPECT_TRUE(codec_.headDone());
          EXPECT_FALSE(codec_.inMessage());
          const std::string now = describeHead();
          if (!head_seen_) {
            events_.push_back("head+message " + now);
          } else {
            // The views must still be valid and unchanged at message end.
            EXPECT_EQ(now, head_text_) << "head changed between kHeadComplete and kMessageComplete";
          }
          events_.push_back("message body=[" + sink_.take() + "]");
          ++messages_;
          start();
          break;
        }
        case HttpCodec::Status::kError:
          failed_ = true;
          events_.push_back(std::string("error ") + errorName(codec_.error()));
          return;
      }
    }
  }

  void finish() {
    if (failed_) return;
    HttpCodec::Status st = codec_.finish();
    if (st == HttpCodec::Status::kMessageComplete) {
      events_.push_back("eof message body=[" + sink_.take() + "]");
      ++messages_;
    } else if (st == HttpCodec::Status::kError) {
      failed_ = true;
      events_.push_back(std::string("eof error ") + errorName(codec_.error()));
    } else {
      events_.push_back("eof idle");
    }
  }

  std::string events() const {
    std::string out;
    for (const std::string& e : events_) out += e + "\n";
    if (!sink_.data.empty()) out += "partial body=[" + sink_.data + "]\n";
    return out;
  }

  HttpCodec& codec() { return codec_; }
  Arena& arena() { return arena_; }
  RequestHead& request() { return req_; }
  ResponseHead& response() { return resp_; }

 private:
  void start() {
    head_seen_ = false;
    if (type_ == HTTP_REQUEST) {
      codec_.startRequest(&req_, &arena_);
    } else {
      bool was_head = messages_ < head_requests_.size() && head_requests_[messages_];
      codec_.startResponse(&resp_, &arena_, was_head);
    }
  }
  std::string describeHead() const { return type_ == HTTP_REQUEST ? describe(req_) : describe(resp_); }

  llhttp_type_t type_;
  HttpCodec codec_;
  Arena arena_;
  RequestHead req_;
  ResponseHead resp_;
  Collector sink_;
  std::vector<bool> head_requests_;
  size_t messages_ = 0;
  bool head_seen_ = false;
  bool failed_ = false;
  std::string head_text_;
  std::vector<std::string> events_;
};

struct Feed {
  llhttp_type_t type = HTTP_REQUEST;
  CodecLimits limits{};
  std::vector<bool> head_requests;
  bool eof = false;  // call finish() after the last read
};

// True if every view of the current head points into [base, base + len).
bool viewsWithin(const MessageHead& h, const char* base, size_t len) {
  auto in = [&](std::string_view v) { return v.empty() || (v.data() >= base && v.data() + v.size() <= base + len); };
  for (const Header& x : h.headers)
    if (!in(x.name) || !in(x.value)) return false;
  return true;
}

// One buffer of the final size, filled read by read; the codec is re-run from
// the first unconsumed byte. `cuts` are the ends of the reads (ascending).
std::string parseContiguous(const std::string& input, const std::vector<size_t>& cuts, const Feed& f,
                            bool expect_no_copies = true) {
  std::unique_ptr<char[]> buf(new char[input.size() + 1]);
  std::memset(buf.get(), '~', input.size() + 1);  // not yet received
  Driver d(f.type, f.limits, f.head_requests);
  size_t pos = 0;
  size_t end = 0;
  for (size_t cut : cuts) {
    std::memcpy(buf.get() + end, input.data() + end, cut - end);
    end = cut;
    d.run(buf.get(), end, pos);
    const MessageHead& h = f.type == HTTP_REQUEST ? static_cast<const MessageHead&>(d.request())
                                                   : static_cast<const MessageHead&>(d.response());
    if (d.events().find("error") == std::string::npos) {
      EXPECT_TRUE(viewsWithin(h, buf.get(), input.size())) << "a view escapes the read buffer";
    }
  }
  if (f.eof) d.finish();
  // Nothing straddles two buffers here, so nothing is ever copied.
  const std::string events = d.events();
  if (expect_no_copies && events.find("error") == std::string::npos) {
    EXPECT_EQ(d.arena().bytesInUse(), 0u);
  }
  return events;
}

// Every read in its own allocation, all kept alive until the end (as the
// input buffer is for the life of a message).
std::string parsePieces(const std::string& input, const std::vector<size_t>& cuts, const Feed& f) {
  std::vector<std::unique_ptr<char[]>> pieces;
  Driver d(f.type, f.limits, f.head_requests);
  size_t begin = 0;
  for (size_t cut : cuts) {
    const size_t n = cut - begin;
    if (n == 0) continue;
    pieces.emplace_back(new char[n]);
    std::memcpy(pieces.back().get(), input.data() + begin, n);
    size_t pos = 0;
    d.run(pieces.back().get(), n, pos);
    begin = cut;
  }
  if (f.eof) d.finish();
  return d.events();
}

// Selects one build of llhttp's state machine for a scope, then restores the
// one the process chose at load time.
class LlhttpBuild {
 public:
  explicit LlhttpBuild(bool simd) : saved_(portcullis_llhttp_simd_active()) {
    active_ = portcullis_llhttp_use_simd(simd ? 1 : 0) == (simd ? 1 : 0);
  }
  ~LlhttpBuild() { portcullis_llhttp_use_simd(saved_); }
  LlhttpBuild(const LlhttpBuild&) = delete;
  LlhttpBuild& operator=(const LlhttpBuild&) = delete;
  bool active() const { return active_; }  // false: this CPU has no such build

 private:
  int saved_;
  bool active_ = false;
};

std::string expectSplitInvariantOneBuild(const std::string& input, const Feed& f);

// Parses `input` in one read, then split in two at every offset and byte by
// byte, with both feeding styles; all must report identical events, under
// each build of llhttp this CPU can run. Returns the one-read events for
// further checks.
std::string expectSplitInvariant(const std::string& input, const Feed& f = {}) {
  std::string baseline;
  {
    LlhttpBuild b(false);
    baseline = expectSplitInvariantOneBuild(input, f);
  }
  LlhttpBuild b(true);
  if (!b.active()) return baseline;
  EXPECT_EQ(expectSplitInvariantOneBuild(input, f), baseline) << "llhttp's SSE4.2 and baseline builds disagree";
  return baseline;
}

std::string expectSplitInvariantOneBuild(const std::string& input, const Feed& f) {
  const std::string whole = parseContiguous(input, {input.size()}, f);
  EXPECT_EQ(parsePieces(input, {input.size()}, f), whole);
  for (size_t k = 0; k <= input.size(); ++k) {
    EXPECT_EQ(parseContiguous(input, {k, input.size()}, f), whole) << "contiguous, split at " << k;
    EXPECT_EQ(parsePieces(input, {k, input.size()}, f), whole) << "pieces, split at " << k;
    if (testing::Test::HasFailure()) return whole;  // one report is enough
  }
  std::vector<size_t> bytes;
  for (size_t k = 1; k <= input.size(); ++k) bytes.push_back(k);
  EXPECT_EQ(parseContiguous(input, bytes, f), whole) << "contiguous, byte by byte";
  EXPECT_EQ(parsePieces(input, bytes, f), whole) << "pieces, byte by byte";
  return whole;
}

// Parses one complete read and returns the events.
std::string parseOnce(const std::string& input, const Feed& f = {}) {
  return parseContiguous(input, {input.size()}, f);
}

Feed requests(CodecLimits limits) {
  Feed f;
  f.limits = limits;
  return f;
}

Feed responses(std::vector<bool> head_requests = {}, bool eof = false) {
  Feed f;
  f.type = HTTP_RESPONSE;
  f.head_requests = std::move(head_requests);
  f.eof = eof;
  return f;
}

// ---------------------------------------------------------------------------
// Requests: split invariance

const std::string kPipelinedRequests =
    "GET /search/items?q=a%20b&x=1 HTTP/1.1\r\n"
    "Host: example.com\r\n"
    "User-Agent:   test-agent/1.0 \t \r\n"
    "X-Empty:\r\n"
    "X-Portcullis-Account: forged\r\n"
    "Accept: */*\r\n"
    "\r\n"
    "POST /upload HTTP/1.1\r\n"
    "Host: example.com\r\n"
    "Content-Length: 11\r\n"
    "Expect: 100-continue\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "hello world"
    "POST /chunks?x HTTP/1.1\r\n"
    "Host: h\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n"
    "5\r\nhello\r\n"
    "6;ext=1\r\n world\r\n"
    "A\r\n0123456789\r\n"
    "0\r\n"
    "\r\n"
    "DELETE /items/7 HTTP/1.0\r\n"
    "Connection: keep-alive\r\n"
    "\r\n"
    "OPTIONS * HTTP/1.1\r\n"
    "Host: h\r\n"
    "Connection: close\r\n"
    "\r\n";

TEST(HttpCodecSplitTest, PipelinedRequestsParseIdenticallyHoweverSplit) {
  const std::string events = expectSplitInvariant(kPipelinedRequests);
  const std::string expected =
      "head GET (1) target=[/search/items?q=a%20b&x=1] path=[/search/items] query=[q=a%20b&x=1] "
      "expect_continue=0 HTTP/1.1 chunked=0 has_cl=0 cl=0 keep_alive=1\n"
      "  [Host]: [example.com] id=1\n"
      "  [User-Agent]: [test-agent/1.0] id=0\n"
      "  [X-Empty]: [] id=0\n"
      "  [X-Portcullis-Account]: [forged] id=20\n"
      "  [Accept]: [*/*] id=0\n"
      "\n"
      "message body=[]\n"
      "head POST (3) target=[/upload] path=[/upload] query=[] expect_continue=1 HTTP/1.1 chunked=0 has_cl=1 "
      "cl=11 keep_alive=1\n"
      "  [Host]: [example.com] id=1\n"
      "  [Content-Length]: [11] id=2\n"
      "  [Expect]: [100-continue] id=13\n"
      "  [Content-Type]: [text/plain] id=15\n"
      "\n"
      "message body=[hello world]\n"
      "head POST (3) target=[/chunks?x] path=[/chunks] query=[x] expect_continue=0 HTTP/1.1 chunked=1 has_cl=0 "
      "cl=0 keep_alive=1\n"
      "  [Host]: [h] id=1\n"
      "  [Transfer-Encoding]: [chunked] id=3\n"
      "\n"
      "message body=[hello world0123456789]\n"
      "head DELETE (0) target=[/items/7] path=[/items/7] query=[] expect_continue=0 HTTP/1.0 chunked=0 has_cl=0 "
      "cl=0 keep_alive=1\n"
      "  [Connection]: [keep-alive] id=4\n"
      "\n"
      "message body=[]\n"
      "head OPTIONS (6) target=[*] path=[*] query=[] expect_continue=0 HTTP/1.1 chunked=0 has_cl=0 cl=0 "
      "keep_alive=0\n"
      "  [Host]: [h] id=1\n"
      "  [Connection]: [close] id=4\n"
      "\n"
      "message body=[]\n";
  EXPECT_EQ(events, expected);
}

TEST(HttpCodecSplitTest, ChunkedBodyWithTrailerHowever) {
  // Trailer fields arrive after the head was acted on; they are not headers
  // of the request and must not change it.
  const std::string input =
      "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\nX-Trailer: t\r\nX-Other: o\r\n\r\n"
      "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string events = expectSplitInvariant(input);
  EXPECT_NE(events.find("message body=[abc]\n"), std::string::npos) << events;
  EXPECT_EQ(events.find("X-Trailer"), std::string::npos) << events;
  EXPECT_NE(events.find("target=[/next]"), std::string::npos) << events;
}

TEST(HttpCodecSplitTest, LargeChunkedAndLengthBodiesConcatenateToTheSameBytes) {
  std::string body;
  for (int i = 0; i < 300; ++i) body.push_back(static_cast<char>('a' + i % 26));
  std::string chunked = "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  // Chunks of 1, 2, 3, ... bytes, sizes in mixed case hex.
  size_t off = 0;
  for (size_t n = 1; off < body.size(); ++n) {
    size_t take = std::min(n, body.size() - off);
    char line[16];
    std::snprintf(line, sizeof line, n % 2 ? "%zx\r\n" : "%zX\r\n", take);
    chunked += line;
    chunked += body.substr(off, take);
    chunked += "\r\n";
    off += take;
  }
  chunked += "0\r\n\r\n";
  std::string events = expectSplitInvariant(chunked);
  EXPECT_NE(events.find("message body=[" + body + "]"), std::string::npos) << events;

  const std::string cl = "PUT /l HTTP/1.1\r\nContent-Length: 300\r\n\r\n" + body;
  events = expectSplitInvariant(cl);
  EXPECT_NE(events.find("message body=[" + body + "]"), std::string::npos) << events;
}

TEST(HttpCodecSplitTest, PiecesModeCopiesOnlyStraddlingViewsIntoTheArena) {
  const std::string input = "GET /abc HTTP/1.1\r\nX-Long-Name: some value here\r\nHost: h\r\n\r\n";
  const size_t cut = input.find("value") + 2;  // inside the X-Long-Name value
  std::unique_ptr<char[]> a(new char[cut]);
  std::unique_ptr<char[]> b(new char[input.size() - cut]);
  std::memcpy(a.get(), input.data(), cut);
  std::memcpy(b.get(), input.data() + cut, input.size() - cut);
  Driver d(HTTP_REQUEST, CodecLimits{});
  HttpCodec& c = d.codec();
  size_t consumed = 0;
  EXPECT_EQ(c.execute(a.get(), cut, consumed), HttpCodec::Status::kNeedMore);
  EXPECT_EQ(consumed, cut);
  EXPECT_EQ(d.arena().bytesInUse(), 0u);
  EXPECT_EQ(c.execute(b.get(), input.size() - cut, consumed), HttpCodec::Status::kHeadComplete);
  EXPECT_EQ(consumed, input.size() - cut);
  const RequestHead& h = d.request();
  ASSERT_EQ(h.headers.size(), 2u);
  EXPECT_EQ(h.headers[0].value, "some value here");
  // The name lies wholly in the first read, the value straddles (arena copy),
  // Host lies wholly in the second read.
  auto inside = [](std::string_view v, const char* base, size_t n) {
    return v.data() >= base && v.data() + v.size() <= base + n;
  };
  EXPECT_TRUE(inside(h.headers[0].name, a.get(), cut));
  EXPECT_FALSE(inside(h.headers[0].value, a.get(), cut));
  EXPECT_FALSE(inside(h.headers[0].value, b.get(), input.size() - cut));
  EXPECT_TRUE(inside(h.headers[1].name, b.get(), input.size() - cut));
  EXPECT_TRUE(inside(h.target, a.get(), cut));
  EXPECT_GT(d.arena().bytesInUse(), 0u);
}

// ---------------------------------------------------------------------------
// Requests: single reads, exact contract

TEST(HttpCodecTest, HeadCompleteReportsWhereTheHeadEndsAndBodyFollows) {
  const std::string head = "POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n";
  const std::string input = head + "hello" + "GET / HTTP/1.1\r\n\r\n";
  HttpCodec c(HTTP_REQUEST, CodecLimits{});
  Collector sink;
  c.setBodySink(&sink);
  Arena arena;
  RequestHead req;
  c.startRequest(&req, &arena);
  EXPECT_FALSE(c.inMessage());
  size_t consumed = 0;
  ASSERT_EQ(c.execute(input.data(), input.size(), consumed), HttpCodec::Status::kHeadComplete);
  EXPECT_EQ(consumed, head.size());
  EXPECT_EQ(c.headBytes(), head.size());
  EXPECT_TRUE(c.inMessage());
  EXPECT_TRUE(c.headDone());
  EXPECT_EQ(req.method, HTTP_POST);
  EXPECT_EQ(req.method_name, "POST");
  EXPECT_EQ(req.path, "/p");
  EXPECT_EQ(req.query, "q=1");
  EXPECT_TRUE(req.has_content_length);
  EXPECT_EQ(req.content_length, 5u);
  EXPECT_TRUE(req.hasBody());
  EXPECT_EQ(sink.calls, 0) << "no body byte before the head is acted on";
  size_t pos = consumed;
  ASSERT_EQ(c.execute(input.data() + pos, input.size() - pos, consumed), HttpCodec::Status::kMessageComplete);
  EXPECT_EQ(consumed, 5u);
  EXPECT_EQ(sink.data, "hello");
  EXPECT_FALSE(c.inMessage());
  pos += consumed;
  // The next request is not touched until startRequest().
  c.startRequest(&req, &arena);
  EXPECT_TRUE(req.headers.empty());
  ASSERT_EQ(c.execute(input.data() + pos, input.size() - pos, consumed), HttpCodec::Status::kHeadComplete);
  EXPECT_EQ(req.method, HTTP_GET);
  EXPECT_FALSE(req.hasBody());
  pos += consumed;
  EXPECT_EQ(pos, input.size());
  // A body-less message ends on an empty run.
  ASSERT_EQ(c.execute(input.data() + pos, 0, consumed), HttpCodec::Status::kMessageComplete);
  EXPECT_EQ(consumed, 0u);
  // Nothing in progress: end of input is clean.
  EXPECT_EQ(c.finish(), HttpCodec::Status::kNeedMore);
}

// A request asking to switch protocols (Connection: upgrade + Upgrade, for
// which llhttp pauses with HPE_PAUSED_UPGRADE after the message) ends like
// any other. The proxy declines an upgrade it does not tunnel, and the
// connection then stays HTTP/1.1: the next request must parse, however the
// bytes are split (with and without a body on the upgrade request).
TEST(HttpCodecSplitTest, DeclinedUpgradeRequestsAreFollowedByHttp) {
  const std::string input =
      "GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
      "POST /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
      "HTTP2-Settings: AAA\r\nContent-Length: 3\r\n\r\nabc"
      "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string events = expectSplitInvariant(input);
  EXPECT_EQ(events.find("error"), std::string::npos) << events;
  EXPECT_NE(events.find("message body=[abc]\nhead GET (1) target=[/next]"), std::string::npos) << events;
  size_t messages = 0;
  for (size_t at = events.find("message body="); at != std::string::npos; at = events.find("message body=", at + 1)) {
    ++messages;
  }
  EXPECT_EQ(messages, 3u) << events;
}

// A 101 answering an upgrade ends at its head; what follows belongs to the
// new protocol and is left unconsumed for the owner.
TEST(HttpCodecResponseTest, SwitchingProtocolsEndsAtItsHead) {
  const std::string head =
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nContent-Length: 9\r\n\r\n";
  for (const std::string& tail : {std::string(), std::string("\x81\x05hello", 7)}) {
    const std::string input = head + tail;
    HttpCodec c(HTTP_RESPONSE, CodecLimits{});
    Collector sink;
    c.setBodySink(&sink);
    Arena arena;
    ResponseHead resp;
    c.startResponse(&resp, &arena, false);
    size_t consumed = 0;
    ASSERT_EQ(c.execute(input.data(), input.size(), consumed), HttpCodec::Status::kMessageComplete);
    EXPECT_EQ(consumed, head.size());
    EXPECT_TRUE(c.headDone());
    EXPECT_FALSE(c.inMessage());
    EXPECT_EQ(resp.status, 101);
    EXPECT_NE(resp.find(HeaderId::kUpgrade), nullptr);
    EXPECT_EQ(sink.calls, 0) << "a 101 has no body, whatever its Content-Length says";
  }
}

TEST(HttpCodecTest, ChunkedBodySlicesExcludeFraming) {
  const std::string input = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n";
  Driver d(HTTP_REQUEST, CodecLimits{});
  size_t pos = 0;
  d.run(input.data(), input.size(), pos);
  EXPECT_EQ(pos, input.size());
  EXPECT_NE(d.events().find("message body=[wikipedia]"), std::string::npos) << d.events();
}

TEST(HttpCodecTest, KeepAliveAndExpect) {
  struct Case {
    std::string text;
    bool keep_alive;
    bool expect_continue;
  };
  const Case cases[] = {
      {"GET / HTTP/1.1\r\n\r\n", true, false},
      {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false, false},
      {"GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", false, false},
      {"GET / HTTP/1.0\r\n\r\n", false, false},
      {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true, false},
      {"POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 100-Continue\r\n\r\n", true, true},
      {"POST / HTTP/1.1\r\nContent-Length: 1\r\nexpect:  100-continue \r\n\r\n", true, true},
      {"POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: 200-ok\r\n\r\n", true, false},
  };
  for (const Case& k : cases) {
    HttpCodec c(HTTP_REQUEST, CodecLimits{});
    Arena arena;
    RequestHead req;
    c.startRequest(&req, &arena);
    size_t consumed = 0;
    ASSERT_EQ(c.execute(k.text.data(), k.text.size(), consumed), HttpCodec::Status::kHeadComplete) << k.text;
    EXPECT_EQ(req.keep_alive, k.keep_alive) << k.text;
    EXPECT_EQ(req.expect_continue, k.expect_continue) << k.text;
  }
}

TEST(HttpCodecTest, TargetPathQuery) {
  struct Case {
    std::string target, path, query;
  };
  const Case cases[] = {
      {"/", "/", ""},
      {"/a/b", "/a/b", ""},
      {"/a?", "/a", ""},
      {"/a?b?c=d", "/a", "b?c=d"},
      {"/?x", "/", "x"},
      {"http://example.com/abs?y=1", "http://example.com/abs", "y=1"},
  };
  for (const Case& k : cases) {
    const std::string text = "GET " + k.target + " HTTP/1.1\r\n\r\n";
    HttpCodec c(HTTP_REQUEST, CodecLimits{});
    Arena arena;
    RequestHead req;
    c.startRequest(&req, &arena);
    size_t consumed = 0;
    ASSERT_EQ(c.execute(text.data(), text.size(), consumed), HttpCodec::Status::kHeadComplete) << text;
    EXPECT_EQ(req.target, k.target);
    EXPECT_EQ(req.path, k.path);
    EXPECT_EQ(req.query, k.query);
  }
}

TEST(HttpCodecTest, StartRequestClearsThePreviousHead) {
  HttpCodec c(HTTP_REQUEST, CodecLimits{});
  Arena arena;
  RequestHead req;
  const std::string a = "POST /a?z HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 0\r\n"
                        "Expect: 100-continue\r\nX-A: 1\r\n\r\n";
  const std::string b = "GET /b HTTP/1.1\r\n\r\n";
  size_t consumed = 0;
  c.startRequest(&req, &arena);
  ASSERT_EQ(c.execute(a.data(), a.size(), consumed), HttpCodec::Status::kHeadComplete);
  req.add("X-Added", "1");
  ASSERT_EQ(c.execute(a.data() + consumed, 0, consumed), HttpCodec::Status::kMessageComplete);
  c.startRequest(&req, &arena);
  ASSERT_EQ(c.execute(b.data(), b.size(), consumed), HttpCodec::Status::kHeadComplete);
  EXPECT_EQ(describe(req),
            "GET (1) target=[/b] path=[/b] query=[] expect_continue=0 HTTP/1.1 chunked=0 has_cl=0 cl=0 "
            "keep_alive=1\n");
  EXPECT_TRUE(req.added.empty());
}

// ---------------------------------------------------------------------------
// Responses

TEST(HttpCodecResponseTest, LengthChunkedAndBodylessResponsesHoweverSplit) {
  const std::string input =
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: up/1\r\n\r\nhello"
      "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
      "HTTP/1.1 204 No Content\r\n\r\n"
      "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
      "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
  const std::string events = expectSplitInvariant(input, responses());
  const std::string expected =
      "head 200 [OK] HTTP/1.1 chunked=0 has_cl=1 cl=5 keep_alive=1\n"
      "  [Content-Length]: [5] id=2\n"
      "  [Server]: [up/1] id=19\n"
      "\n"
      "message body=[hello]\n"
      "head 201 [Created] HTTP/1.1 chunked=1 has_cl=0 cl=0 keep_alive=1\n"
      "  [Transfer-Encoding]: [chunked] id=3\n"
      "\n"
      "message body=[abcde]\n"
      "head+message 204 [No Content] HTTP/1.1 chunked=0 has_cl=0 cl=0 keep_alive=1\n"
      "\n"
      "message body=[]\n"
      "head+message 304 [Not Modified] HTTP/1.1 chunked=0 has_cl=0 cl=0 keep_alive=1\n"
      "  [ETag]: [\"x\"] id=0\n"
      "\n"
      "message body=[]\n"
      "head 404 [] HTTP/1.1 chunked=0 has_cl=1 cl=0 keep_alive=1\n"
      "  [Content-Length]: [0] id=2\n"
      "\n"
      "message body=[]\n"
      "head 200 [OK] HTTP/1.1 chunked=0 has_cl=1 cl=2 keep_alive=0\n"
      "  [Content-Length]: [2] id=2\n"
      "  [Connection]: [close] id=4\n"
      "\n"
      "message body=[ok]\n";
  EXPECT_EQ(events, expected);
}

TEST(HttpCodecResponseTest, ResponsesThatNeverHaveABodyIgnoreTheirContentLength) {
  // RFC 9112 §6.3: a response to HEAD, and any 1xx, 204 or 304 response, ends
  // at its head whatever Content-Length says (for 304 and HEAD it is the
  // length the full response would have had). The next response follows
  // immediately on the same connection.
  const std::string input =
      "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"  // answers a HEAD
      "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
      "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
  const std::string events = expectSplitInvariant(input, responses({true, false, false, false, false}));
  const std::string expected =
      "head+message 200 [OK] HTTP/1.1 chunked=0 has_cl=1 cl=10 keep_alive=1\n"
      "  [Content-Length]: [10] id=2\n"
      "\n"
      "message body=[]\n";
  EXPECT_EQ(events.substr(0, expected.size()), expected) << events;
  EXPECT_NE(events.find("304 [Not Modified] HTTP/1.1 chunked=0 has_cl=1 cl=10 keep_alive=1\n"
                        "  [Content-Length]: [10] id=2\n\nmessage body=[]\n"),
            std::string::npos)
      << events;
  EXPECT_NE(events.find("204 [No Content] HTTP/1.1 chunked=0 has_cl=1 cl=7 keep_alive=1\n"
                        "  [Content-Length]: [7] id=2\n\nmessage body=[]\n"),
            std::string::npos)
      << events;
  EXPECT_NE(events.find("100 [Continue] HTTP/1.1 chunked=0 has_cl=0 cl=0 keep_alive=1\n\nmessage body=[]\n"),
            std::string::npos)
      << events;
  EXPECT_NE(events.find("200 [OK] HTTP/1.1 chunked=0 has_cl=1 cl=3 keep_alive=1\n"
                        "  [Content-Length]: [3] id=2\n\nmessage body=[abc]\n"),
            std::string::npos)
      << events;
  EXPECT_EQ(events.find("error"), std::string::npos) << events;
}

TEST(HttpCodecResponseTest, HeadResponseCompletesWithItsHead) {
  const std::string input = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-A: b\r\n\r\n";
  HttpCodec c(HTTP_RESPONSE, CodecLimits{});
  Collector sink;
  c.setBodySink(&sink);
  Arena arena;
  ResponseHead resp;
  c.startResponse(&resp, &arena, /*request_was_head=*/true);
  size_t consumed = 0;
  ASSERT_EQ(c.execute(input.data(), input.size(), consumed), HttpCodec::Status::kMessageComplete);
  EXPECT_EQ(consumed, input.size());
  EXPECT_TRUE(c.headDone());
  EXPECT_FALSE(c.inMessage());
  EXPECT_EQ(resp.status, 200);
  EXPECT_EQ(resp.content_length, 1000u);
  ASSERT_NE(resp.findByName("x-a"), nullptr);
  EXPECT_EQ(resp.findByName("x-a")->value, "b");
  EXPECT_EQ(sink.calls, 0);
  EXPECT_FALSE(c.needsEof());
}

TEST(HttpCodecResponseTest, InterimResponseThenFinal) {
  const std::string input =
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
  const std::string events = expectSplitInvariant(input, responses());
  EXPECT_EQ(events,
            "head+message 100 [Continue] HTTP/1.1 chunked=0 has_cl=0 cl=0 keep_alive=1\n\n"
            "message body=[]\n"
            "head+message 103 [Early Hints] HTTP/1.1 chunked=0 has_cl=0 cl=0 keep_alive=1\n"
            "  [Link]: [</s.css>; rel=preload] id=0\n\n"
            "message body=[]\n"
            "head 200 [OK] HTTP/1.1 chunked=0 has_cl=1 cl=2 keep_alive=1\n"
            "  [Content-Length]: [2] id=2\n\n"
            "message body=[hi]\n");
}

TEST(HttpCodecResponseTest, CloseDelimitedBodyEndsAtEof) {
  const std::string input = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this until close";
  const std::string events = expectSplitInvariant(input, responses({}, /*eof=*/true));
  EXPECT_EQ(events,
            "head 200 [OK] HTTP/1.1 chunked=0 has_cl=0 cl=0 keep_alive=0\n"
            "  [Content-Type]: [text/plain] id=15\n\n"
            "eof message body=[all of this until close]\n");

  HttpCodec c(HTTP_RESPONSE, CodecLimits{});
  Collector sink;
  c.setBodySink(&sink);
  Arena arena;
  ResponseHead resp;
  c.startResponse(&resp, &arena, false);
  size_t consumed = 0;
  ASSERT_EQ(c.execute(input.data(), input.size(), consumed), HttpCodec::Status::kHeadComplete);
  EXPECT_TRUE(c.needsEof());
  size_t pos = consumed;
  EXPECT_EQ(c.execute(input.data() + pos, input.size() - pos, consumed), HttpCodec::Status::kNeedMore);
  EXPECT_EQ(sink.data, "all of this until close");
  EXPECT_EQ(c.finish(), HttpCodec::Status::kMessageComplete);
  EXPECT_FALSE(c.inMessage());
}

TEST(HttpCodecResponseTest, Http10ResponseWithoutLengthIsCloseDelimited) {
  const std::string input = "HTTP/1.0 200 OK\r\n\r\nbody";
  EXPECT_EQ(expectSplitInvariant(input, responses({}, true)),
            "head 200 [OK] HTTP/1.0 chunked=0 has_cl=0 cl=0 keep_alive=0\n\n"
            "eof message body=[body]\n");
}

TEST(HttpCodecResponseTest, EofInsideALengthOrChunkedBodyIsAnError) {
  EXPECT_EQ(parseOnce("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", responses({}, true)),
            "head 200 [OK] HTTP/1.1 chunked=0 has_cl=1 cl=10 keep_alive=1\n"
            "  [Content-Length]: [10] id=2\n\n"
            "eof error malformed\n"
            "partial body=[short]\n");
  EXPECT_EQ(parseOnce("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", responses({}, true)),
            "head 200 [OK] HTTP/1.1 chunked=1 has_cl=0 cl=0 keep_alive=1\n"
            "  [Transfer-Encoding]: [chunked] id=3\n\n"
            "eof error malformed\n"
            "partial body=[ab]\n");
  EXPECT_EQ(parseOnce("HTTP/1.1 200 OK\r\nContent-", responses({}, true)), "eof error malformed\n");
  EXPECT_EQ(parseOnce("", responses({}, true)), "eof idle\n");
}

TEST(HttpCodecResponseTest, ResponseWithoutARequestIsMalformed) {
  HttpCodec c(HTTP_RESPONSE, CodecLimits{});
  const std::string input = "HTTP/1.1 200 OK\r\n\r\n";
  size_t consumed = 0;
  EXPECT_EQ(c.execute(input.data(), input.size(), consumed), HttpCodec::Status::kError);
  EXPECT_EQ(c.error(), CodecError::kMalformed);
}

// ---------------------------------------------------------------------------
// Errors: each reported the same way however the input is split

struct ErrorCase {
  const char* name;
  std::string text;
  CodecError error;
  CodecLimits limits{};
};

std::vector<ErrorCase> errorCases() {
  CodecLimits small_uri;
  small_uri.max_uri_bytes = 16;
  CodecLimits few_headers;
  few_headers.max_headers = 3;
  CodecLimits small_head;
  small_head.max_header_bytes = 128;
  std::string many_small_headers = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 12; ++i) many_small_headers += "X-H" + std::to_string(i) + ": vvvvvvvvvvvv\r\n";
  many_small_headers += "\r\n";
  return {
      {"cl_and_te", "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       CodecError::kMalformed},
      {"te_and_cl", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
       CodecError::kMalformed},
      {"two_lengths", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", CodecError::kMalformed},
      {"bad_length", "POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\nhello", CodecError::kMalformed},
      {"te_not_chunked_last", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", CodecError::kMalformed},
      {"bad_chunk_size", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
       CodecError::kMalformed},
      {"chunk_size_overflow",
       "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n",
       CodecError::kMalformed},
      {"chunk_data_too_long", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
       CodecError::kMalformed},
      {"uri_too_long", "GET /0123456789abcdefgh HTTP/1.1\r\n\r\n", CodecError::kUriTooLong, small_uri},
      {"too_many_headers", "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", CodecError::kHeadersTooLarge,
       few_headers},
      {"head_too_big", many_small_headers, CodecError::kHeadersTooLarge, small_head},
      {"one_huge_value", "GET / HTTP/1.1\r\nX: " + std::string(200, 'v') + "\r\n\r\n", CodecError::kHeadersTooLarge,
       small_head},
      {"http_2_0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", CodecError::kBadVersion},
      {"http_1_2", "GET / HTTP/1.2\r\nHost: h\r\n\r\n", CodecError::kBadVersion},
      {"http_0_9", "GET / HTTP/0.9\r\nHost: h\r\n\r\n", CodecError::kBadVersion},
      {"obs_fold", "GET / HTTP/1.1\r\nX-A: a\r\n  folded\r\nHost: h\r\n\r\n", CodecError::kMalformed},
      {"obs_fold_tab", "GET / HTTP/1.1\r\nX-A: a\r\n\tfolded\r\n\r\n", CodecError::kMalformed},
      {"space_before_colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", CodecError::kMalformed},
      {"space_in_name", "GET / HTTP/1.1\r\nX A: h\r\n\r\n", CodecError::kMalformed},
      {"leading_space_header", "GET / HTTP/1.1\r\n Host: h\r\n\r\n", CodecError::kMalformed},
      {"no_colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", CodecError::kMalformed},
      {"ctl_in_value", std::string("GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n"), CodecError::kMalformed},
      {"nul_in_value", std::string("GET / HTTP/1.1\r\nX: a\0z\r\n\r\n", 26), CodecError::kMalformed},
      {"bad_method", "G@T / HTTP/1.1\r\n\r\n", CodecError::kMalformed},
      {"space_in_target", "GET /a b HTTP/1.1\r\n\r\n", CodecError::kMalformed},
      {"tls_hello", "\x16\x03\x01\x02", CodecError::kMalformed},
  };
}

TEST(HttpCodecErrorTest, ErrorsAreReportedHoweverSplit) {
  for (const ErrorCase& k : errorCases()) {
    SCOPED_TRACE(k.name);
    Feed f;
    f.limits = k.limits;
    const std::string events = expectSplitInvariant(k.text, f);
    const std::string want = std::string("\nerror ") + errorName(k.error) + "\n";
    EXPECT_NE(("\n" + events).find(want), std::string::npos) << events;
    // The error is sticky.
    HttpCodec c(HTTP_REQUEST, k.limits);
    Arena arena;
    RequestHead req;
    c.startRequest(&req, &arena);
    size_t pos = 0;
    size_t consumed = 0;
    HttpCodec::Status st;
    do {
      st = c.execute(k.text.data() + pos, k.text.size() - pos, consumed);
      pos += consumed;
      if (st == HttpCodec::Status::kMessageComplete) c.startRequest(&req, &arena);
    } while (st != HttpCodec::Status::kError && st != HttpCodec::Status::kNeedMore);
    ASSERT_EQ(st, HttpCodec::Status::kError);
    EXPECT_EQ(c.error(), k.error);
    EXPECT_NE(c.errorReason(), nullptr);
    EXPECT_EQ(c.execute("GET / HTTP/1.1\r\n\r\n", 18, consumed), HttpCodec::Status::kError);
    EXPECT_EQ(consumed, 0u);
    EXPECT_EQ(c.finish(), HttpCodec::Status::kError);
  }
}

TEST(HttpCodecErrorTest, DataAfterConnectionCloseIsRejected) {
  // llhttp treats a message that does not keep the connection alive as the
  // last one; the owner closes after answering it.
  const std::string input = "GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
  const std::string events = expectSplitInvariant(input);
  EXPECT_NE(events.find("message body=[]\nerror malformed\n"), std::string::npos) << events;
  EXPECT_EQ(events.find("/b"), std::string::npos) << events;
}

TEST(HttpCodecErrorTest, TrailersAreBoundedByTheHeadLimit) {
  CodecLimits l;
  l.max_header_bytes = 64;
  std::string input = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n";
  for (int i = 0; i < 10; ++i) input += "X-T" + std::to_string(i) + ": trailer\r\n";
  input += "\r\n";
  const std::string events = expectSplitInvariant(input, requests(l));
  EXPECT_NE(events.find("error headers_too_large\n"), std::string::npos) << events;
  EXPECT_EQ(events.find("message"), std::string::npos) << events;
}

TEST(HttpCodecErrorTest, ResponseHeadLimitHoldsForBodylessResponsesToo) {
  CodecLimits l;
  l.max_header_bytes = 48;
  const std::string big = "HTTP/1.1 204 No Content\r\nX-Padding: 0123456789abcdef\r\n\r\n";  // 57 bytes
  Feed f = responses({false});
  f.limits = l;
  EXPECT_EQ(expectSplitInvariant(big, f), "error headers_too_large\n");
  f = responses({true});
  f.limits = l;
  const std::string head_resp = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Pad: 0123456789\r\n\r\n";
  EXPECT_EQ(expectSplitInvariant(head_resp, f), "error headers_too_large\n");
}

std::string reasonFor(const std::string& text, CodecLimits limits = {}, llhttp_type_t type = HTTP_REQUEST) {
  HttpCodec c(type, limits);
  Arena arena;
  RequestHead req;
  ResponseHead resp;
  if (type == HTTP_REQUEST) {
    c.startRequest(&req, &arena);
  } else {
    c.startResponse(&resp, &arena, false);
  }
  size_t pos = 0;
  size_t consumed = 0;
  for (int i = 0; i < 10; ++i) {
    HttpCodec::Status st = c.execute(text.data() + pos, text.size() - pos, consumed);
    pos += consumed;
    if (st == HttpCodec::Status::kError) return std::string(errorName(c.error())) + ": " + c.errorReason();
    if (st == HttpCodec::Status::kNeedMore) break;
  }
  return "no error";
}

TEST(HttpCodecErrorTest, ReasonsSayWhatWasWrong) {
  CodecLimits l;
  l.max_uri_bytes = 4;
  l.max_headers = 1;
  l.max_header_bytes = 40;
  EXPECT_EQ(reasonFor("GET /12345 HTTP/1.1\r\n\r\n", l), "uri_too_long: request target too long");
  EXPECT_EQ(reasonFor("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", l), "headers_too_large: too many header fields");
  EXPECT_EQ(reasonFor("GET / HTTP/1.1\r\nA: 0123456789012345678901234567890123456789\r\n\r\n", l),
            "headers_too_large: head too large");
  EXPECT_EQ(reasonFor("GET / HTTP/2.0\r\n\r\n"), "bad_version: unsupported HTTP version");
  EXPECT_EQ(reasonFor("GET / HTTP/1.1\r\nA: 1\r\n 2\r\n\r\n"), "malformed: obs-fold in header");
  EXPECT_EQ(reasonFor("HTTP/1.1 200 OK\r\nA: 1\r\n\t2\r\n\r\n", {}, HTTP_RESPONSE), "malformed: obs-fold in header");
  // Errors found by llhttp keep llhttp's reason.
  const std::string smuggle = reasonFor("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_EQ(smuggle.substr(0, 11), "malformed: ") << smuggle;
  EXPECT_NE(smuggle.find("Content-Length"), std::string::npos) << smuggle;
  // A response with no request to answer.
  HttpCodec c(HTTP_RESPONSE, CodecLimits{});
  size_t consumed = 0;
  ASSERT_EQ(c.execute("HTTP/1.1 200 OK\r\n\r\n", 19, consumed), HttpCodec::Status::kError);
  EXPECT_STREQ(c.errorReason(), "message without a request");
}

TEST(HttpCodecErrorTest, LimitsAreInclusive) {
  CodecLimits l;
  l.max_uri_bytes = 16;
  l.max_headers = 2;
  const std::string ok = "GET /0123456789abcde HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n";  // 16-byte target
  EXPECT_EQ(parseOnce(ok, requests(l)).find("error"), std::string::npos);
  // Head limit: exactly max_header_bytes is accepted, one more is not.
  const std::string head = "GET / HTTP/1.1\r\nX: abc\r\n\r\n";
  CodecLimits exact;
  exact.max_header_bytes = static_cast<uint32_t>(head.size());
  EXPECT_EQ(expectSplitInvariant(head, requests(exact)).find("error"), std::string::npos);
  exact.max_header_bytes -= 1;
  EXPECT_NE(expectSplitInvariant(head, requests(exact)).find("error headers_too_large"),
            std::string::npos);
}

TEST(HttpCodecErrorTest, ErrorInASecondPipelinedRequestComesAfterTheFirst) {
  const std::string input = "GET /ok HTTP/1.1\r\n\r\nGET /bad HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
  const std::string events = expectSplitInvariant(input);
  EXPECT_EQ(events,
            "head GET (1) target=[/ok] path=[/ok] query=[] expect_continue=0 HTTP/1.1 chunked=0 has_cl=0 cl=0 "
            "keep_alive=1\n\n"
            "message body=[]\n"
            "error malformed\n");
}

// ---------------------------------------------------------------------------
// Serialisation for the next hop

RequestHead parseRequestHead(const std::string& text, Arena& arena, HttpCodec& c) {
  RequestHead req;
  c.startRequest(&req, &arena);
  size_t consumed = 0;
  EXPECT_EQ(c.execute(text.data(), text.size(), consumed), HttpCodec::Status::kHeadComplete) << text;
  return req;
}

// ---------------------------------------------------------------------------
// The two builds of llhttp's state machine

// llhttp's SSE4.2 build matches header names and values 16 bytes a step
// (_mm_cmpestri over byte ranges) where the baseline build looks each byte up
// in a table. Every byte value at positions in and around the first and second
// 16-byte window of a long name and of a long value, in requests and
// responses, in one read and split where the window is cut short: both builds
// must report the same events.
TEST(HttpCodecSimdTest, BuildsAgreeOnEveryByteOfLongNamesAndValues) {
  {
    LlhttpBuild probe(true);
    if (!probe.active()) GTEST_SKIP() << "this CPU has no SSE4.2 build of llhttp";
  }
  const std::string kName = "X-Long-Header-Name-0123456789ab";  // 31 bytes
  int accepted = 0;
  int refused = 0;
  for (size_t pos : {0, 1, 7, 15, 16, 17, 30}) {
    for (int b = 0; b < 256; ++b) {
      for (bool in_name : {true, false}) {
        std::string name = kName;
        std::string value(40, 'v');
        if (in_name) {
          name[pos] = static_cast<char>(b);
        } else {
          value[pos] = static_cast<char>(b);
        }
        const std::string field = name + ": " + value + "\r\n";
        const std::string request = "GET / HTTP/1.1\r\n" + field + "Host: h\r\n\r\n";
        const std::string response = "HTTP/1.1 200 OK\r\n" + field + "Content-Length: 0\r\n\r\n";
        for (const std::string* msg : {&request, &response}) {
          Feed f;
          if (msg == &response) f = responses();
          const size_t line = msg->find("\r\n") + 2;  // where the name starts
          const size_t at = line + (in_name ? 0 : name.size() + 2) + pos;
          // One read; a read ending 8 bytes past the varied byte's window
          // start; one ending right before the varied byte.
          const std::vector<std::vector<size_t>> feeds = {
              {msg->size()}, {std::min(at + 8, msg->size()), msg->size()}, {at, msg->size()}};
          for (const std::vector<size_t>& cuts : feeds) {
            std::string base;
            std::string simd;
            {
              LlhttpBuild b0(false);
              base = parseContiguous(*msg, cuts, f);
            }
            {
              LlhttpBuild b1(true);
              simd = parseContiguous(*msg, cuts, f);
            }
            ASSERT_EQ(simd, base) << "byte " << b << " at " << pos << (in_name ? " of the name" : " of the value")
                                  << ", cuts " << cuts.front() << ":\n"
                                  << *msg;
            (base.find("error") == std::string::npos ? accepted : refused) += 1;
          }
        }
      }
    }
  }
  // Both outcomes occur: token and value bytes pass, CTLs and separators not.
  EXPECT_GT(accepted, 1000);
  EXPECT_GT(refused, 1000);
}

TEST(HttpMessageTest, SerializeRequestDropsHopByHopAndConnectionNamedHeaders) {
  const std::string text =
      "POST /api/v1?x=1 HTTP/1.1\r\n"
      "Host: example.com\r\n"
      "Connection: keep-alive, X-Secret, x-other\r\n"
      "Keep-Alive: timeout=5\r\n"
      "X-Secret: s\r\n"
      "X-Other: o\r\n"
      "TE: trailers\r\n"
      "Trailer: X-T\r\n"
      "Upgrade: websocket\r\n"
      "Proxy-Connection: keep-alive\r\n"
      "Proxy-Authorization: Basic abc\r\n"
      "HTTP2-Settings: AAA\r\n"
      "Authorization: Bearer t\r\n"
      "Content-Length: 4\r\n"
      "X-Keep: k\r\n"
      "\r\n";
  Arena arena;
  HttpCodec c(HTTP_REQUEST, CodecLimits{});
  RequestHead req = parseRequestHead(text, arena, c);
  req.remove(HeaderId::kAuthorization);
  req.add("X-Request-Id", "0123");
  req.add("X-Forwarded-For", "10.0.0.1");
  std::string out;
  serializeRequest(req, true, false, 4, out);
  EXPECT_EQ(out,
            "POST /api/v1?x=1 HTTP/1.1\r\n"
            "Host: example.com\r\n"
            "X-Keep: k\r\n"
            "X-Request-Id: 0123\r\n"
            "X-Forwarded-For: 10.0.0.1\r\n"
            "Content-Length: 4\r\n"
            "\r\n");

  out = "prefix|";
  serializeRequest(req, true, true, 0, out);
  EXPECT_EQ(out,
            "prefix|POST /api/v1?x=1 HTTP/1.1\r\n"
            "Host: example.com\r\n"
            "X-Keep: k\r\n"
            "X-Request-Id: 0123\r\n"
            "X-Forwarded-For: 10.0.0.1\r\n"
            "Transfer-Encoding: chunked\r\n"
            "\r\n");

  out.clear();
  serializeRequest(req, false, false, 0, out);
  EXPECT_EQ(out.find("Content-Length"), std::string::npos);
  EXPECT_EQ(out.find("Transfer-Encoding"), std::string::npos);
}

TEST(HttpMessageTest, SerializeRequestReplacesClientFramingAndVersion) {
  const std::string text = "PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\nX-A:  a b \r\n\r\n";
  Arena arena;
  HttpCodec c(HTTP_REQUEST, CodecLimits{});
  RequestHead req = parseRequestHead(text, arena, c);
  std::string out;
  serializeRequest(req, true, false, 12, out);
  EXPECT_EQ(out, "PUT /x HTTP/1.1\r\nX-A: a b\r\nContent-Length: 12\r\n\r\n");
}

TEST(HttpMessageTest, SerializeResponseFramings) {
  // CL + TE is rejected by the parser, so build the head by hand.
  ResponseHead resp;
  resp.status = 200;
  resp.reason = "Fine";
  for (auto [n, v] : std::vector<std::pair<std::string_view, std::string_view>>{
           {"Content-Length", "5"},
           {"Connection", "keep-alive, X-Hop"},
           {"X-Hop", "h"},
           {"Transfer-Encoding", "chunked"},
           {"Keep-Alive", "timeout=1"},
           {"Content-Type", "text/plain"}}) {
    resp.headers.push_back(Header{n, v, lookupHeader(n)});
  }
  resp.add("X-Request-Id", "abc");

  std::string out;
  serializeResponse(resp, ResponseFraming::kNone, 0, false, out);
  EXPECT_EQ(out,
            "HTTP/1.1 200 Fine\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nX-Request-Id: abc\r\n\r\n");
  out.clear();
  serializeResponse(resp, ResponseFraming::kContentLength, 42, false, out);
  EXPECT_EQ(out, "HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\nX-Request-Id: abc\r\nContent-Length: 42\r\n\r\n");
  out.clear();
  serializeResponse(resp, ResponseFraming::kChunked, 0, true, out);
  EXPECT_EQ(out,
            "HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\nX-Request-Id: abc\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
  out.clear();
  serializeResponse(resp, ResponseFraming::kUntilClose, 0, true, out);
  EXPECT_EQ(out, "HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\nX-Request-Id: abc\r\nConnection: close\r\n\r\n");

  ResponseHead bare;
  bare.status = 503;
  out.clear();
  serializeResponse(bare, ResponseFraming::kContentLength, 0, false, out);
  EXPECT_EQ(out, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
  bare.status = 299;
  out.clear();
  serializeResponse(bare, ResponseFraming::kNone, 0, false, out);
  EXPECT_EQ(out, "HTTP/1.1 299 Unknown\r\n\r\n");
}

TEST(HttpMessageTest, RemovedHeadersAndFindSkipRemoved) {
  ResponseHead resp;
  resp.status = 200;
  resp.headers.push_back(Header{"Server", "nginx/1.2", HeaderId::kServer});
  resp.headers.push_back(Header{"X-Custom", "1", HeaderId::kOther});
  resp.headers.push_back(Header{"Server", "again", HeaderId::kServer});
  EXPECT_NE(resp.find(HeaderId::kServer), nullptr);
  resp.remove(HeaderId::kServer);
  EXPECT_EQ(resp.find(HeaderId::kServer), nullptr);
  EXPECT_NE(resp.findByName("x-CUSTOM"), nullptr);
  EXPECT_EQ(resp.findByName("server"), nullptr);
  std::string out;
  serializeResponse(resp, ResponseFraming::kNone, 0, false, out);
  EXPECT_EQ(out, "HTTP/1.1 200 OK\r\nX-Custom: 1\r\n\r\n");
}

// ---------------------------------------------------------------------------
// headers.h

TEST(HeadersTest, LookupHeaderIsCaseInsensitiveAndExact) {
  struct Case {
    const char* name;
    HeaderId id;
  };
  const Case cases[] = {
      {"Host", HeaderId::kHost},
      {"HOST", HeaderId::kHost},
      {"content-length", HeaderId::kContentLength},
      {"Transfer-Encoding", HeaderId::kTransferEncoding},
      {"Connection", HeaderId::kConnection},
      {"Keep-Alive", HeaderId::kKeepAlive},
      {"Proxy-Connection", HeaderId::kProxyConnection},
      {"TE", HeaderId::kTe},
      {"Trailer", HeaderId::kTrailer},
      {"Upgrade", HeaderId::kUpgrade},
      {"Proxy-Authenticate", HeaderId::kProxyAuthenticate},
      {"Proxy-Authorization", HeaderId::kProxyAuthorization},
      {"HTTP2-Settings", HeaderId::kHttp2Settings},
      {"Expect", HeaderId::kExpect},
      {"Authorization", HeaderId::kAuthorization},
      {"Content-Type", HeaderId::kContentType},
      {"X-Forwarded-For", HeaderId::kXForwardedFor},
      {"X-Forwarded-Proto", HeaderId::kXForwardedProto},
      {"X-Request-Id", HeaderId::kXRequestId},
      {"Server", HeaderId::kServer},
      {"X-Portcullis-Account", HeaderId::kXPortcullis},
      {"x-portcullis-a", HeaderId::kXPortcullis},
      {"X-PORTCULLIS-Some-Very-Long-Header-Name-Indeed", HeaderId::kXPortcullis},
      {"X-Portcullis-", HeaderId::kOther},
      {"X-Portcullis", HeaderId::kOther},
      {"Hosts", HeaderId::kOther},
      {"Hos", HeaderId::kOther},
      {"T", HeaderId::kOther},
      {"", HeaderId::kOther},
      {"Content-Length ", HeaderId::kOther},
      {"X-Forwarded-Host", HeaderId::kOther},
      // Same length as a known name, other or same first letter.
      {"Accept-Ranges", HeaderId::kOther},
      {"Date", HeaderId::kOther},
      {"Cookie", HeaderId::kOther},
      {"Expecu", HeaderId::kOther},
      {"Referer", HeaderId::kOther},
      {"Keep-Alivf", HeaderId::kOther},
      {"Set-Cookie", HeaderId::kOther},
      {"Content-MD5!", HeaderId::kOther},
      {"X-Request-Ie", HeaderId::kOther},
      {"Content-Lengtg", HeaderId::kOther},
      {"Accept-Encoding", HeaderId::kOther},
      {"Transfer-Encodinh", HeaderId::kOther},
      {"tE", HeaderId::kTe},
      {"UPGRADE", HeaderId::kUpgrade},
  };
  for (const Case& k : cases) EXPECT_EQ(lookupHeader(k.name), k.id) << k.name;
}

// lookupHeader compares whole words under a case mask; every one-byte change
// of every known name (each position, each of the 256 byte values, in both
// cases of the rest) must give what a plain case-insensitive comparison
// gives: e.g. '\r' (0x0d) must not pass for '-' (0x2d) although they differ
// only in bit 0x20.
TEST(HeadersTest, LookupAgreesWithPlainComparisonOnEveryOneByteChange) {
  struct Known {
    std::string_view name;
    HeaderId id;
  };
  static constexpr Known kKnown[] = {
      {"te", HeaderId::kTe},
      {"host", HeaderId::kHost},
      {"expect", HeaderId::kExpect},
      {"server", HeaderId::kServer},
      {"trailer", HeaderId::kTrailer},
      {"upgrade", HeaderId::kUpgrade},
      {"keep-alive", HeaderId::kKeepAlive},
      {"connection", HeaderId::kConnection},
      {"x-request-id", HeaderId::kXRequestId},
      {"content-type", HeaderId::kContentType},
      {"authorization", HeaderId::kAuthorization},
      {"http2-settings", HeaderId::kHttp2Settings},
      {"content-length", HeaderId::kContentLength},
      {"x-forwarded-for", HeaderId::kXForwardedFor},
      {"proxy-connection", HeaderId::kProxyConnection},
      {"x-forwarded-proto", HeaderId::kXForwardedProto},
      {"transfer-encoding", HeaderId::kTransferEncoding},
      {"proxy-authenticate", HeaderId::kProxyAuthenticate},
      {"proxy-authorization", HeaderId::kProxyAuthorization},
      {"Strict-Transport-Security", HeaderId::kStrictTransportSecurity},
      {"strict-transport-securitx", HeaderId::kOther},
      {"x-portcullis-id", HeaderId::kXPortcullis},
  };
  auto reference = [&](std::string_view n) {
    for (const Known& k : kKnown) {
      if (k.id != HeaderId::kXPortcullis && equalsIgnoreCase(n, k.name)) return k.id;
    }
    if (n.size() > 13 && equalsIgnoreCase(n.substr(0, 13), "x-portcullis-")) return HeaderId::kXPortcullis;
    return HeaderId::kOther;
  };
  size_t checked = 0;
  for (const Known& k : kKnown) {
    for (bool upper : {false, true}) {
      std::string base(k.name);
      if (upper) {
        for (char& c : base) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      }
      ASSERT_EQ(lookupHeader(base), k.id) << base;
      for (size_t i = 0; i < base.size(); ++i) {
        for (int b = 0; b < 256; ++b) {
          std::string m = base;
          m[i] = static_cast<char>(b);
          ASSERT_EQ(lookupHeader(m), reference(m)) << "name " << k.name << " byte " << i << " = " << b;
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 50000u);
}

// strictHeadBytes skips eight bytes at a time past those without CR or LF;
// a lone CR or LF at any offset (so at every position within a word) of
// heads of several lengths must still be refused, and the CRLFs of a valid
// head accepted, exactly as a byte-by-byte check decides.
TEST(StrictHeadBytesTest, LoneCrOrLfAtEveryOffset) {
  auto reference = [](std::string_view head) {
    for (size_t i = 0; i < head.size(); ++i) {
      if (head[i] == '\n' && (i == 0 || head[i - 1] != '\r')) return false;
      if (head[i] == '\r' && (i + 1 == head.size() || head[i + 1] != '\n')) return false;
    }
    return true;
  };
  const std::string heads[] = {
      "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET /tiny HTTP/1.1\r\nHost: 127.0.0.1:36923\r\n\r\n",
      "\r\nPOST /upload?x=1 HTTP/1.1\r\nHost: example.test\r\nContent-Length: 12\r\n"
      "X-Long: 0123456789abcdef0123456789abcdef0123456789\r\n\r\n",
  };
  size_t checked = 0;
  for (const std::string& base : heads) {
    ASSERT_TRUE(strictHeadBytes(base)) << base;
    const size_t first = base.rfind("\r\n", 0) == 0 ? 2 : 0;
    const size_t headers_at = base.find("\r\n", first) + 2;  // past the request line
    for (size_t i = 0; i < base.size(); ++i) {
      for (char c : {'\r', '\n', 'x'}) {
        std::string replaced = base;
        replaced[i] = c;  // may break a CRLF, or add a lone CR/LF
        std::string inserted = base;
        inserted.insert(i, 1, c);
        for (const std::string& h : {replaced, inserted}) {
          if (!reference(h)) {
            EXPECT_FALSE(strictHeadBytes(h)) << "accepted a lone CR or LF, offset " << i;
          } else if (i >= headers_at) {
            EXPECT_TRUE(strictHeadBytes(h)) << "refused a well-formed head, offset " << i;
          }
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 500u);
}

TEST(HeadersTest, HopByHop) {
  EXPECT_TRUE(isHopByHop(HeaderId::kConnection));
  EXPECT_TRUE(isHopByHop(HeaderId::kKeepAlive));
  EXPECT_TRUE(isHopByHop(HeaderId::kProxyConnection));
  EXPECT_TRUE(isHopByHop(HeaderId::kTe));
  EXPECT_TRUE(isHopByHop(HeaderId::kTrailer));
  EXPECT_TRUE(isHopByHop(HeaderId::kTransferEncoding));
  EXPECT_TRUE(isHopByHop(HeaderId::kUpgrade));
  EXPECT_TRUE(isHopByHop(HeaderId::kProxyAuthorization));
  EXPECT_TRUE(isHopByHop(HeaderId::kProxyAuthenticate));
  EXPECT_TRUE(isHopByHop(HeaderId::kHttp2Settings));
  EXPECT_FALSE(isHopByHop(HeaderId::kHost));
  EXPECT_FALSE(isHopByHop(HeaderId::kContentLength));
  EXPECT_FALSE(isHopByHop(HeaderId::kAuthorization));
  EXPECT_FALSE(isHopByHop(HeaderId::kOther));
}

TEST(HeadersTest, HeaderListContains) {
  EXPECT_TRUE(headerListContains("close", "close"));
  EXPECT_TRUE(headerListContains("Keep-Alive, Upgrade", "upgrade"));
  EXPECT_TRUE(headerListContains(" a ,\tb\t, c", "b"));
  EXPECT_TRUE(headerListContains("a,b,c", "c"));
  EXPECT_TRUE(headerListContains("a,,b", "b"));
  EXPECT_FALSE(headerListContains("ab", "a"));
  EXPECT_FALSE(headerListContains("a b", "a"));
  EXPECT_FALSE(headerListContains("abc, bcd", "bc"));
  EXPECT_FALSE(headerListContains("", "a"));
  EXPECT_FALSE(headerListContains("keep-alive", "close"));
  EXPECT_TRUE(equalsIgnoreCase("ABC-def", "abc-DEF"));
  EXPECT_FALSE(equalsIgnoreCase("abc", "abd"));
  EXPECT_FALSE(equalsIgnoreCase("abc", "abcd"));
}

TEST(HeadersTest, ReasonPhrase) {
  EXPECT_EQ(reasonPhrase(200), "OK");
  EXPECT_EQ(reasonPhrase(403), "Forbidden");
  EXPECT_EQ(reasonPhrase(431), "Request Header Fields Too Large");
  EXPECT_EQ(reasonPhrase(777), "Unknown");
}

}  // namespace
}  // namespace portcullis
