// Upload encryption end to end (SPEC §3 encrypt_body/[encryption], §7):
// bodies go through the real proxy to a demo backend that stores them on
// disk; the stored ciphertext must decrypt, with the C++ opener, with
// `portcullisctl decrypt` and with the independent Python implementation, to
// exactly what the client sent.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "proxy/keyring.h"
#include "tests/e2e/harness.h"
#include "tools/pcx1/pcx1.h"

namespace portcullis::e2e {
namespace {

namespace fs = std::filesystem;

// Byte i of a test body; differs per `seed` so that bodies are distinct.
inline char patternByte(uint64_t i, uint32_t seed) { return static_cast<char>((i * 131 + seed * 7 + (i >> 11)) & 0xff); }

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

struct RunResult {
  int rc = -1;
  std::string err;
};

// Runs argv with stdin from `in` and stdout to `out` (files).
RunResult runFiles(std::vector<std::string> argv, const std::string& in, const std::string& out) {
  RunResult r;
  r.rc = runWithFiles(std::move(argv), in, out, out + ".err");
  std::ifstream f(out + ".err");
  r.err.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return r;
}

std::string sha256File(const std::string& path, uint64_t* size = nullptr) {
  SHA256_CTX c;
  SHA256_Init(&c);
  std::ifstream f(path, std::ios::binary);
  std::vector<char> buf(1 << 20);
  uint64_t total = 0;
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    SHA256_Update(&c, buf.data(), static_cast<size_t>(f.gcount()));
    total += static_cast<uint64_t>(f.gcount());
  }
  uint8_t md[32];
  SHA256_Final(md, &c);
  if (size != nullptr) *size = total;
  return hex(md, 32);
}

class EncryptE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    uploads_ = dir_.file("uploads");
    fs::create_directories(uploads_);
    keyring_ = dir_.file("keyring.toml");
    for (int i = 0; i < 2; ++i) RAND_bytes(keys_[i].data(), 32);
    writeRing("k1");
  }

  void writeRing(const std::string& active) {
    KeyringData d;
    d.active = active;
    d.keys = {{"k1", keys_[0]}, {"k2", keys_[1]}};
    std::string e;
    ASSERT_TRUE(writeKeyring(keyring_, d, e)) << e;
  }

  ProxyOptions options(uint32_t segment_bytes, const std::string& backend) {
    ProxyOptions o = ProxyOptions::forBackend(backend);
    RouteSpec r;
    r.prefix = "/upload";
    r.extra_toml = "encrypt_body = true\n";
    RouteSpec plain;
    plain.prefix = "/";
    o.routes = {r, plain};
    o.limits["max_body_bytes"] = 256ull << 20;
    o.extra_toml = "[encryption]\nkeyring = \"" + keyring_ + "\"\nsegment_bytes = " + std::to_string(segment_bytes) +
                   "\n";
    return o;
  }

  // Sends `size` pattern bytes to /upload?name=`name`, Content-Length framed
  // or chunked in pieces of `chunk` bytes; returns the response.
  HttpResponse upload(uint16_t port, const std::string& name, uint64_t size, bool chunked, uint32_t seed,
                      size_t chunk = 50000) {
    Client c(port, Millis(60000));
    std::string head = "POST /upload?name=" + name + " HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n";
    head += chunked ? "Transfer-Encoding: chunked\r\n\r\n" : "Content-Length: " + std::to_string(size) + "\r\n\r\n";
    EXPECT_TRUE(c.send(head));
    std::string piece;
    for (uint64_t off = 0; off < size;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, size - off));
      piece.clear();
      if (chunked) {
        char line[32];
        std::snprintf(line, sizeof(line), "%zx\r\n", n);
        piece += line;
      }
      for (size_t i = 0; i < n; ++i) piece += patternByte(off + i, seed);
      if (chunked) piece += "\r\n";
      if (!c.send(piece)) break;
      off += n;
    }
    if (chunked) {
      EXPECT_TRUE(c.send("0\r\n\r\n"));
    }
    HttpResponse r;
    EXPECT_EQ(c.readResponse(r), ReadResult::kOk);
    return r;
  }

  static std::string patternSha(uint64_t size, uint32_t seed) {
    SHA256_CTX c;
    SHA256_Init(&c);
    std::string buf;
    for (uint64_t off = 0; off < size;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(1 << 20, size - off));
      buf.resize(n);
      for (size_t i = 0; i < n; ++i) buf[i] = patternByte(off + i, seed);
      SHA256_Update(&c, buf.data(), n);
      off += n;
    }
    uint8_t md[32];
    SHA256_Final(md, &c);
    return hex(md, 32);
  }

  // Decrypts a stored upload with portcullisctl and with the Python
  // reference; both must succeed and give `want_sha` of `want_size` bytes.
  void expectDecrypts(const std::string& name, uint64_t want_size, const std::string& want_sha) {
    const std::string stored = uploads_ + "/" + name;
    ASSERT_TRUE(fs::exists(stored)) << stored;
    const std::string out1 = dir_.file(name + ".ctl.plain");
    RunResult a = runFiles({PORTCULLISCTL_BIN, "decrypt", "--keyring", keyring_}, stored, out1);
    EXPECT_EQ(a.rc, 0) << a.err;
    uint64_t n1 = 0;
    EXPECT_EQ(sha256File(out1, &n1), want_sha) << name;
    EXPECT_EQ(n1, want_size);
    const std::string out2 = dir_.file(name + ".py.plain");
    RunResult b = runFiles({"python3", std::string(TESTS_DATA_DIR) + "/../pcx1_reference.py", "decrypt", "--key",
                            "k1=" + hex(keys_[0].data(), 32), "--key", "k2=" + hex(keys_[1].data(), 32)},
                           stored, out2);
    EXPECT_EQ(b.rc, 0) << b.err;
    uint64_t n2 = 0;
    EXPECT_EQ(sha256File(out2, &n2), want_sha) << name;
    EXPECT_EQ(n2, want_size);
    fs::remove(out1);
    fs::remove(out2);
  }

  // Decrypts a stored upload in process (the embeddable C++ opener).
  void expectDecryptsInProcess(const std::string& name, uint64_t want_size, const std::string& want_sha) {
    std::ifstream f(uploads_ + "/" + name, std::ios::binary);
    ASSERT_TRUE(f.good()) << name;
    std::string ct((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<uint8_t> plain;
    std::string reason;
    pcx1::KeyLookup lookup = [this](std::string_view id, uint8_t* out) {
      const MasterKey* k = id == "k1" ? &keys_[0] : id == "k2" ? &keys_[1] : nullptr;
      if (k != nullptr) std::memcpy(out, k->data(), 32);
      return k != nullptr;
    };
    ASSERT_EQ(pcx1::openAll(lookup, {reinterpret_cast<const uint8_t*>(ct.data()), ct.size()}, plain, &reason),
              pcx1::Error::kOk)
        << name << ": " << reason;
    EXPECT_EQ(plain.size(), want_size) << name;
    uint8_t md[32];
    SHA256(plain.data(), plain.size(), md);
    EXPECT_EQ(hex(md, 32), want_sha) << name;
  }

  // The key id a stored upload's pcx1 header names.
  std::string storedKeyId(const std::string& name) {
    std::ifstream f(uploads_ + "/" + name, std::ios::binary);
    std::string h(pcx1::kMaxHeaderLen, '\0');
    f.read(h.data(), static_cast<std::streamsize>(h.size()));
    if (f.gcount() < 12) return "";
    const size_t len = static_cast<uint8_t>(h[10]);
    return h.substr(11, len);
  }

  TempDir dir_;
  std::string uploads_, keyring_;
  MasterKey keys_[2];
};

void checkEcho(const HttpResponse& r, uint64_t size, uint32_t segment, bool chunked, const std::string& key) {
  ASSERT_EQ(r.status, 200) << r.body;
  std::optional<Echo> e = parseEcho(r.body);
  ASSERT_TRUE(e.has_value()) << r.body;
  EXPECT_EQ(e->headers["x-portcullis-encryption"], "pcx1; key=\"" + key + "\"");
  EXPECT_EQ(e->headers["content-type"], "application/octet-stream") << "the original type is kept";
  EXPECT_EQ(e->body_bytes, pcx1::ciphertextLength(size, key.size(), segment));
  if (chunked) {
    EXPECT_EQ(e->headers["transfer-encoding"], "chunked");
    EXPECT_EQ(e->headers.count("content-length"), 0u);
  } else {
    EXPECT_EQ(e->headers["content-length"], std::to_string(pcx1::ciphertextLength(size, key.size(), segment)));
  }
}

TEST_F(EncryptE2E, SizesAroundSegmentBoundariesBothFramings) {
  DemoBackend backend(uploads_);
  constexpr uint32_t kSeg = 65536;
  Proxy proxy(options(kSeg, backend.address()));
  const uint64_t sizes[] = {0, 1, kSeg - 1, kSeg, kSeg + 1, 3 * kSeg + 5};
  uint32_t seed = 1;
  uint64_t total = 0;
  int count = 0;
  for (bool chunked : {false, true}) {
    for (uint64_t size : sizes) {
      if (chunked && size == 0) continue;  // a chunked empty body is covered below
      const std::string name = std::string(chunked ? "c" : "l") + std::to_string(size);
      HttpResponse r = upload(proxy.httpPort(), name, size, chunked, ++seed, 65536 - 7);
      checkEcho(r, size, kSeg, chunked, "k1");
      expectDecrypts(name, size, patternSha(size, seed));
      total += size;
      ++count;
    }
  }
  {
    // Chunked with no data chunk at all: one empty final segment.
    Client c(proxy.httpPort());
    HttpResponse r = c.roundTrip(
        "POST /upload?name=c0 HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    checkEcho(r, 0, kSeg, true, "k1");
    expectDecrypts("c0", 0, patternSha(0, 0));
    ++count;
  }
  EXPECT_EQ(proxy.waitForMetric("portcullis_uploads_encrypted_total{key_id=\"k1\"}", count), count);
  EXPECT_EQ(proxy.waitForMetric("portcullis_bytes_encrypted_total{key_id=\"k1\"}", static_cast<double>(total)),
            static_cast<double>(total));
  EXPECT_EQ(proxy.metricOr0("portcullis_uploads_encrypted_total{key_id=\"k2\"}"), 0);
}

TEST_F(EncryptE2E, SmallSegmentsManyPerReadAndOddChunks) {
  DemoBackend backend(uploads_);
  constexpr uint32_t kSeg = 16;
  Proxy proxy(options(kSeg, backend.address()));
  uint32_t seed = 100;
  std::map<std::string, uint32_t> seeds;
  for (bool chunked : {false, true}) {
    for (uint64_t size : {15ull, 16ull, 17ull, 48ull, 5000ull, 200000ull}) {
      for (size_t piece : {size_t(1), size_t(7), size_t(16), size_t(4099)}) {
        if (piece < 16 && size > 5000) continue;  // tiny chunks: slow, the small sizes cover them
        const std::string name = std::string(chunked ? "c" : "l") + std::to_string(size) + "_" + std::to_string(piece);
        HttpResponse r = upload(proxy.httpPort(), name, size, chunked, ++seed, piece);
        checkEcho(r, size, kSeg, chunked, "k1");
        expectDecryptsInProcess(name, size, patternSha(size, seed));
        seeds[name] = seed;
      }
    }
  }
  // A sample through both external decryptors as well.
  expectDecrypts("l5000_7", 5000, patternSha(5000, seeds["l5000_7"]));
  expectDecrypts("c200000_4099", 200000, patternSha(200000, seeds["c200000_4099"]));
}

// Content-Length bodies are encrypted where the connection read them: with
// requests pipelined behind them in the same reads, the bytes after each body
// must reach the parser untouched, and each body the backend as ciphertext.
TEST_F(EncryptE2E, PipelinedUploadsAndRequestsInOneWrite) {
  DemoBackend backend(uploads_);
  constexpr uint32_t kSeg = 1000;
  Proxy proxy(options(kSeg, backend.address()));
  const uint64_t sizes[] = {0, 999, 1000, 2501, 70000};
  Client c(proxy.httpPort(), Millis(60000));
  std::string all;
  uint32_t seed = 500;
  for (uint64_t size : sizes) {
    all += "POST /upload?name=p" + std::to_string(size) +
           " HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
           std::to_string(size) + "\r\n\r\n";
    ++seed;
    for (uint64_t i = 0; i < size; ++i) all += patternByte(i, seed);
    all += "GET /plain?after=" + std::to_string(size) + " HTTP/1.1\r\nHost: t\r\n\r\n";
  }
  ASSERT_TRUE(c.send(all));
  seed = 500;
  for (uint64_t size : sizes) {
    HttpResponse r;
    ASSERT_EQ(c.readResponse(r), ReadResult::kOk) << size;
    checkEcho(r, size, kSeg, false, "k1");
    expectDecryptsInProcess("p" + std::to_string(size), size, patternSha(size, ++seed));
    HttpResponse g;
    ASSERT_EQ(c.readResponse(g), ReadResult::kOk) << size;
    ASSERT_EQ(g.status, 200) << g.body;
    std::optional<Echo> e = parseEcho(g.body);
    ASSERT_TRUE(e.has_value()) << g.body;
    EXPECT_EQ(e->path, "/plain?after=" + std::to_string(size)) << "the request behind the body arrived intact";
    EXPECT_EQ(e->headers.count("x-portcullis-encryption"), 0u);
  }
  expectDecrypts("p70000", 70000, patternSha(70000, 505));
}

// pcx1 allows at most 2^32 - 1 segments: a Content-Length that needs more
// (with 16-byte segments, anything over 64 GiB) is refused at once with 413,
// and the backend never sees the request.
TEST_F(EncryptE2E, LengthNeedingTooManySegmentsIsRefusedUpFront) {
  DemoBackend backend(uploads_);
  ProxyOptions o = options(16, backend.address());
  o.limits["max_body_bytes"] = 1ull << 40;
  Proxy proxy(o);
  const uint64_t before = backend.requests();
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip("POST /upload?name=huge HTTP/1.1\r\nHost: t\r\nContent-Length: " +
                               std::to_string(16ull * 0xFFFFFFFFull + 1) + "\r\n\r\n0123456789");
  expectProxyError(r, 413, "payload_too_large");
  EXPECT_EQ(backend.requests(), before);
  EXPECT_FALSE(std::filesystem::exists(uploads_ + "/huge"));
}

TEST_F(EncryptE2E, HundredMebibytesBothFramings) {
  DemoBackend backend(uploads_);
  Proxy proxy(options(65536, backend.address()));
  constexpr uint64_t kSize = 100ull << 20;
  for (bool chunked : {false, true}) {
    const std::string name = chunked ? "big_chunked" : "big_length";
    const uint32_t seed = chunked ? 7 : 8;
    HttpResponse r = upload(proxy.httpPort(), name, kSize, chunked, seed, 1 << 20);
    checkEcho(r, kSize, 65536, chunked, "k1");
    expectDecrypts(name, kSize, patternSha(kSize, seed));
    fs::remove(uploads_ + "/" + name);
  }
}

TEST_F(EncryptE2E, KeyRotationMidTraffic) {
  DemoBackend backend(uploads_);
  Proxy proxy(options(1024, backend.address()));
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0};
  std::vector<std::pair<std::string, uint32_t>> names;
  std::thread traffic([&] {
    // Until told to stop (the rotation must happen mid-traffic however fast
    // the machine is), paced so the number of stored bodies stays small.
    for (uint32_t i = 0; !stop.load() && i < 20000; ++i) {
      if (i >= 5) std::this_thread::sleep_for(Millis(3));
      const std::string name = "rot" + std::to_string(i);
      HttpResponse r = upload(proxy.httpPort(), name, 3000 + i, i % 2 == 1, 500 + i, 1000);
      if (r.status != 200) ADD_FAILURE() << r.status << " " << r.body;
      names.emplace_back(name, i);
      sent++;
    }
  });
  while (sent.load() < 5) std::this_thread::sleep_for(Millis(5));
  writeRing("k2");  // no signal: the keyring watch picks it up
  const auto deadline = std::chrono::steady_clock::now() + Millis(8000);
  bool rotated = false;
  while (std::chrono::steady_clock::now() < deadline && !rotated) {
    rotated = proxy.metricOr0("portcullis_uploads_encrypted_total{key_id=\"k2\"}") >= 5;
    std::this_thread::sleep_for(Millis(20));
  }
  stop = true;
  traffic.join();
  EXPECT_TRUE(rotated) << "uploads did not switch to the new active key; uploads sent: " << sent.load()
                       << ", k2 uploads: " << proxy.metricOr0("portcullis_uploads_encrypted_total{key_id=\"k2\"}")
                       << ", k1 uploads: " << proxy.metricOr0("portcullis_uploads_encrypted_total{key_id=\"k1\"}");
  int k1 = 0, k2 = 0;
  std::string last_k1, last_k2;
  for (const auto& [name, i] : names) {
    const std::string id = storedKeyId(name);
    (id == "k1" ? k1 : k2)++;
    (id == "k1" ? last_k1 : last_k2) = name;
    EXPECT_TRUE(id == "k1" || id == "k2") << id;
    expectDecryptsInProcess(name, 3000 + i, patternSha(3000 + i, 500 + i));
  }
  // One of each key through both external decryptors as well.
  for (const auto& [name, i] : names) {
    if (name == last_k1 || name == last_k2) expectDecrypts(name, 3000 + i, patternSha(3000 + i, 500 + i));
  }
  EXPECT_GT(k1, 0);
  EXPECT_GT(k2, 0);
  EXPECT_EQ(proxy.reload(), true) << "a reload with an unchanged keyring still works";
}

TEST_F(EncryptE2E, ClientAbortLeavesBackendWithoutACompleteBody) {
  DemoBackend backend(uploads_);
  Proxy proxy(options(4096, backend.address()));
  const uint64_t before = backend.requests();
  for (bool chunked : {false, true}) {
    Client c(proxy.httpPort());
    std::string head = "POST /upload?name=aborted HTTP/1.1\r\nHost: t\r\n";
    head += chunked ? "Transfer-Encoding: chunked\r\n\r\n" : "Content-Length: 1000000\r\n\r\n";
    std::string body(300000, 'x');
    if (chunked) body = "493e0\r\n" + body + "\r\n";
    ASSERT_TRUE(c.send(head + body));
    std::this_thread::sleep_for(Millis(200));  // the proxy forwards what it has
  }
  // Both clients are gone now (destructors closed them).
  proxy.waitForMetric("portcullis_uploads_encryption_aborted_total{key_id=\"k1\"}", 2);
  EXPECT_EQ(proxy.metricOr0("portcullis_uploads_encryption_aborted_total{key_id=\"k1\"}"), 2);
  EXPECT_EQ(proxy.metricOr0("portcullis_uploads_encrypted_total{key_id=\"k1\"}"), 0);
  std::this_thread::sleep_for(Millis(200));
  EXPECT_EQ(backend.requests(), before) << "the backend never completed an aborted upload";
  EXPECT_FALSE(fs::exists(uploads_ + "/aborted"));
}

TEST_F(EncryptE2E, GroupReadableKeyringRefusedAtStartAndOnReload) {
  DemoBackend backend(uploads_);
  {
    ASSERT_EQ(::chmod(keyring_.c_str(), 0644), 0);
    const std::string conf = dir_.file("bad.toml");
    std::ofstream(conf) << renderConfig(options(65536, backend.address()), dir_.path());
    ChildProcess p({PORTCULLIS_BIN, "-c", conf});
    int ws = 0;
    ASSERT_TRUE(p.waitExit(Millis(10000), &ws));
    EXPECT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) == 1);
    EXPECT_NE(p.stderrText().find("keyring.toml"), std::string::npos) << p.stderrText();
    ASSERT_EQ(::chmod(keyring_.c_str(), 0600), 0);
  }
  Proxy proxy(options(65536, backend.address()));
  {
    // The new keyring appears at once with mode 0640 (rename), so neither
    // the watch nor SIGHUP may ever apply it.
    const std::string real = keyring_;
    keyring_ = dir_.file("next.toml");
    writeRing("k2");
    ASSERT_EQ(::chmod(keyring_.c_str(), 0640), 0);
    ASSERT_EQ(::rename(keyring_.c_str(), real.c_str()), 0);
    keyring_ = real;
  }
  EXPECT_FALSE(proxy.reload()) << "a keyring readable by the group is refused on reload";
  // The watch retries a refused keyring every second; while it stays 0640
  // it is refused each time and the old snapshot (and key) stays.
  std::this_thread::sleep_for(Millis(1500));
  HttpResponse r = upload(proxy.httpPort(), "after", 10, false, 3);
  checkEcho(r, 10, 65536, false, "k1");
  ASSERT_EQ(::chmod(keyring_.c_str(), 0600), 0);
  expectDecrypts("after", 10, patternSha(10, 3));
  // Fixed (mode 0600, same mtime): the retried read now applies it.
  std::string key;
  for (int i = 0; i < 30 && key != "pcx1; key=\"k2\""; ++i) {
    std::this_thread::sleep_for(Millis(100));
    std::optional<Echo> e = parseEcho(upload(proxy.httpPort(), "fixed", 10, false, 4).body);
    key = e ? e->headers["x-portcullis-encryption"] : "";
  }
  EXPECT_EQ(key, "pcx1; key=\"k2\"") << "a refused keyring is retried until it loads";
  // The proxy's own logs never contain key material.
  for (const MasterKey& k : keys_) {
    EXPECT_EQ(proxy.process().stderrText().find(hex(k.data(), 32)), std::string::npos);
  }
}

TEST_F(EncryptE2E, RoutesWithoutEncryptBodyAreForwardedAsIs) {
  DemoBackend backend(uploads_);
  Proxy proxy(options(65536, backend.address()));
  Client c(proxy.httpPort());
  HttpResponse r = c.roundTrip("POST /plain HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
  ASSERT_EQ(r.status, 200);
  std::optional<Echo> e = parseEcho(r.body);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->body_bytes, 5u);
  EXPECT_EQ(e->headers.count("x-portcullis-encryption"), 0u);
  // A body-less GET on an encrypting route is not touched either.
  HttpResponse g = c.roundTrip(getRequest("/upload/x"));
  ASSERT_EQ(g.status, 200);
  std::optional<Echo> ge = parseEcho(g.body);
  ASSERT_TRUE(ge.has_value());
  EXPECT_EQ(ge->body_bytes, 0u);
  EXPECT_EQ(ge->headers.count("x-portcullis-encryption"), 0u);
  // A client cannot pretend a body is already encrypted.
  HttpResponse f = c.roundTrip("POST /plain HTTP/1.1\r\nHost: t\r\nX-Portcullis-Encryption: pcx1; key=\"k1\"\r\n"
                               "Content-Length: 2\r\n\r\nhi");
  std::optional<Echo> fe = parseEcho(f.body);
  ASSERT_TRUE(fe.has_value());
  EXPECT_EQ(fe->headers.count("x-portcullis-encryption"), 0u);
}

}  // namespace
}  // namespace portcullis::e2e
