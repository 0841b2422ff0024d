// Request validation end to end (SPEC §3 [[route]], §5): Content-Type
// allowlist (415), streaming JSON validation (400), upload sniffing and
// multipart (422), request-target normalisation (400, and the backend sees
// only the normalised path), TRACE (405). Refused requests never reach the
// backend as a complete request.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"
#include "tests/upload_samples.h"

namespace portcullis::e2e {
namespace {

using testing_samples::xlsxHead;
using testing_samples::xlsHead;

// An upstream that counts complete requests and remembers the last head.
class RecordingUpstream {
 public:
  RecordingUpstream()
      : server_([this](int fd, int) {
          for (;;) {
            std::string head = ScriptedUpstream::readRequest(fd, Millis(5000));
            if (head.empty()) return;  // EOF, timeout or an incomplete request
            {
              std::lock_guard<std::mutex> lock(mu_);
              last_ = head;
            }
            requests_++;
            if (!ScriptedUpstream::writeAll(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) return;
          }
        }) {}
  std::string address() const { return server_.address(); }
  int requests() const { return requests_.load(); }
  std::string lastHead() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }

 private:
  std::atomic<int> requests_{0};
  std::mutex mu_;
  std::string last_;
  ScriptedUpstream server_;
};

std::string post(const std::string& path, const std::string& type, const std::string& body) {
  std::string r = "POST " + path + " HTTP/1.1\r\nHost: e2e.test\r\n";
  if (!type.empty()) r += "Content-Type: " + type + "\r\n";
  return r + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

class ValidateE2E : public ::testing::Test {
 protected:
  ProxyOptions options() {
    ProxyOptions o = ProxyOptions::forBackend(upstream_.address());
    RouteSpec json{"/api/", "app", {}, 0, "validate_json = true\ncontent_types = [\"application/json\"]\n"};
    RouteSpec uploads{"/uploads/", "app", {}, 0,
                      "upload = true\ncontent_types = [\"text/csv\", "
                      "\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet\", "
                      "\"application/vnd.ms-excel\", \"multipart/form-data\"]\n"};
    RouteSpec open{"/", "app", {}, 0, ""};
    o.routes = {json, uploads, open};
    return o;
  }
  // Expects a proxy error, a closed connection after a body refusal, and no
  // new complete request at the backend.
  void expectRefused(const std::string& request, int status, const std::string& code) {
    const int before = upstream_.requests();
    Client c(proxy_->httpPort());
    HttpResponse r = c.roundTrip(request);
    expectProxyError(r, status, code);
    // Give a wrongly forwarded request time to show up before asserting.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(upstream_.requests(), before) << "the backend saw a refused request";
  }
  void expectServed(const std::string& request) {
    const int before = upstream_.requests();
    Client c(proxy_->httpPort());
    HttpResponse r = c.roundTrip(request);
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(upstream_.requests(), before + 1);
  }
  void SetUp() override { proxy_ = std::make_unique<Proxy>(options()); }

  RecordingUpstream upstream_;
  std::unique_ptr<Proxy> proxy_;
};

TEST_F(ValidateE2E, ContentTypeAllowlist) {
  expectServed(post("/api/items", "application/json; charset=utf-8", "{\"a\":[1,2,{\"b\":null}]}"));
  expectRefused(post("/api/items", "text/plain", "{}"), 415, "unsupported_media_type");
  expectRefused(post("/api/items", "", "{}"), 415, "unsupported_media_type");
  expectServed(getRequest("/api/items"));  // no body, nothing to check
}

TEST_F(ValidateE2E, MalformedJsonIsRefusedAtTheFirstBadByte) {
  for (const char* bad : {"{\"a\":1,}", "[1 2]", "{\"a\":\"\\x\"}", "\"\xc3\x28\"", "{\"a\":01}", "{} {}",
                          "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
                          "{\"a\":"}) {
    SCOPED_TRACE(bad);
    expectRefused(post("/api/items", "application/json", bad), 400, "bad_request");
  }
}

TEST_F(ValidateE2E, JsonErrorInALaterPieceStillStopsTheRequest) {
  const int before = upstream_.requests();
  Client c(proxy_->httpPort());
  const std::string body = "{\"items\":[" + std::string(200000, ' ') + "1,2,3}";  // "}" closes the array: invalid
  const std::string req = post("/api/items", "application/json", body);
  ASSERT_TRUE(c.send(req.substr(0, 1000)));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the valid prefix may already be forwarded
  c.send(req.substr(1000));
  HttpResponse r;
  ASSERT_EQ(c.readResponse(r), ReadResult::kOk);
  expectProxyError(r, 400, "bad_request");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(upstream_.requests(), before) << "the backend got a complete invalid request";
}

TEST_F(ValidateE2E, UploadsMustBeWhatTheyClaim) {
  const std::string xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
  expectServed(post("/uploads/x", "text/csv", "id,name\r\n1,\"a, b\"\r\n2,\"say \"\"hi\"\"\"\r\n"));
  expectServed(post("/uploads/x", xlsx, xlsxHead() + "rest of a zip"));
  expectServed(post("/uploads/x", "application/vnd.ms-excel", xlsHead() + "ole2 body"));
  // The signature alone does not make a spreadsheet.
  expectRefused(post("/uploads/x", xlsx, std::string("PK\x03\x04MZ\x90\x00this is an exe", 22)), 422, "invalid_upload");
  expectRefused(post("/uploads/x", xlsx, xlsxHead("payload.exe") + "MZ"), 422, "invalid_upload");
  expectRefused(post("/uploads/x", "application/vnd.ms-excel", std::string("\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1MZ\x90\x00", 12)),
                422, "invalid_upload");
  expectRefused(post("/uploads/x", "text/csv", std::string("id\n1\0\n", 6)), 422, "invalid_upload");
  expectRefused(post("/uploads/x", "text/csv", "a,b\"c\n"), 422, "invalid_upload");
  expectRefused(post("/uploads/x", xlsx, "this is not a zip file"), 422, "invalid_upload");
  expectRefused(post("/uploads/x", "application/pdf", "%PDF-1.7"), 415, "unsupported_media_type");
}

TEST_F(ValidateE2E, MultipartFilePartsAreCheckedOneByOne) {
  auto multipart = [](const std::string& part_type, const std::string& content) {
    std::string b = "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
                    "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n"
                    "Content-Type: " + part_type + "\r\n\r\n" + content + "\r\n--XyZ--\r\n";
    return post("/uploads/m", "multipart/form-data; boundary=XyZ", b);
  };
  expectServed(multipart("text/csv", "id,qty\n1,2\n"));
  expectRefused(multipart("text/csv", std::string("id\n\x01\n", 5)), 422, "invalid_upload");
  expectRefused(multipart("image/png", "\x89PNG"), 422, "invalid_upload");
  expectRefused(post("/uploads/m", "multipart/form-data; boundary=XyZ", "--XyZ\r\nbroken"), 422, "invalid_upload");
}

// What another multipart parser would see as a file must be checked as one.
// Werkzeug (Flask) takes a bare-LF boundary, and a boundary in mid-line of
// the preamble, as a delimiter: the proxy refuses any "--" boundary that is
// not a CRLF delimiter. A part with a type but no filename is a file part;
// a plain field must be text.
TEST_F(ValidateE2E, MultipartPartsOtherParsersWouldSeeAreChecked) {
  const std::string exe = std::string("MZ\x90\x00\x03\x00\x00\x00\x04\x00", 10) + "executable";
  const std::string cd = "Content-Disposition: form-data; name=";
  auto mp = [](const std::string& body) { return post("/uploads/m", "multipart/form-data; boundary=XyZ", body); };
  expectRefused(mp("--XyZ\r\n" + cd + "\"note\"\r\n\r\nhi\n--XyZ\n" + cd +
                   "\"upload\"; filename=\"report.csv\"\nContent-Type: text/csv\n\n" + exe + "\r\n--XyZ--\r\n"),
                422, "invalid_upload");
  expectRefused(mp("junk--XyZ\r\n" + cd + "\"upload\"; filename=\"r.csv\"\r\nContent-Type: text/csv\r\n\r\n" + exe +
                   "\r\n--XyZ\r\n" + cd + "\"a\"\r\n\r\nx\r\n--XyZ--\r\n"),
                422, "invalid_upload");
  expectRefused(mp("--XyZ\r\n" + cd + "\"upload\"\r\nContent-Type: application/x-msdownload\r\n\r\n" + exe +
                   "\r\n--XyZ--\r\n"),
                422, "invalid_upload");
  expectRefused(mp("--XyZ\r\n" + cd + "\"note\"\r\n\r\n" + exe + "\r\n--XyZ--\r\n"), 422, "invalid_upload");
  // Text fields (also typed text/plain), a typed CSV part without filename,
  // and a boundary-like string that is not the boundary, pass.
  expectServed(mp("--XyZ\r\n" + cd + "\"note\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nh\xc3\xa9llo\r\n\tl\u00e0 --XyY\r\n"
                  "--XyZ\r\n" + cd + "\"rows\"\r\nContent-Type: text/csv\r\n\r\nid,qty\n1,2\n\r\n--XyZ--\r\n"));
}

// The CSV and text-field checks read UTF-8: a body declared in another
// charset (which the backend would decode as declared, so bytes the check
// passed as UTF-8 would mean other characters there) is refused.
TEST_F(ValidateE2E, TextUploadsMustBeUtf8AsDeclared) {
  const std::string csv = "id,name\r\n1,caf\xc3\xa9\r\n";
  expectServed(post("/uploads/x", "text/csv; charset=utf-8", csv));
  expectServed(post("/uploads/x", "text/csv;charset=\"UTF-8\"; header=present", csv));
  expectServed(post("/uploads/x", "text/csv; charset=us-ascii", "id\r\n1\r\n"));
  expectRefused(post("/uploads/x", "text/csv; charset=iso-8859-1", csv), 415, "unsupported_media_type");
  expectRefused(post("/uploads/x", "text/csv; charset=utf-16le", "i\0d\0"), 415, "unsupported_media_type");
  expectRefused(post("/uploads/x", "text/csv; charset=utf-8; charset=latin1", csv), 415, "unsupported_media_type");
  expectRefused(post("/uploads/x", "text/csv; charset=\"utf-8", csv), 415, "unsupported_media_type");
  const std::string cd = "Content-Disposition: form-data; name=";
  auto mp = [&](const std::string& part_head, const std::string& content) {
    return post("/uploads/m", "multipart/form-data; boundary=XyZ",
                "--XyZ\r\n" + cd + part_head + "\r\n\r\n" + content + "\r\n--XyZ--\r\n");
  };
  expectServed(mp("\"f\"; filename=\"a.csv\"\r\nContent-Type: text/csv; charset=UTF-8", csv));
  expectRefused(mp("\"f\"; filename=\"a.csv\"\r\nContent-Type: text/csv; charset=windows-1252", csv), 422,
                "invalid_upload");
  expectRefused(mp("\"note\"\r\nContent-Type: text/plain; charset=koi8-r", "privet"), 422, "invalid_upload");
}

// Content-Type is single-valued: a second one, which a backend might read
// instead of (or joined with) the checked one, is refused.
TEST_F(ValidateE2E, RepeatedContentTypeIsRefused) {
  auto twice = [](const std::string& path, const std::string& a, const std::string& b, const std::string& body) {
    return "POST " + path + " HTTP/1.1\r\nHost: e2e.test\r\nContent-Type: " + a + "\r\nContent-Type: " + b +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  expectRefused(twice("/api/items", "application/json", "application/xml", "{}"), 400, "bad_request");
  expectRefused(twice("/uploads/x", "text/csv", "text/html", "<script>alert(1)</script>"), 400, "bad_request");
  expectRefused(twice("/other", "text/plain", "application/json", "{\"a\":"), 400, "bad_request");
}

TEST_F(ValidateE2E, TargetsAreNormalisedBeforeRoutingAndForwarding) {
  Client c(proxy_->httpPort());
  HttpResponse r = c.roundTrip(getRequest("/api/a/./b/../c/%7Euser?q=%2F"));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(upstream_.lastHead().substr(0, upstream_.lastHead().find("\r\n")), "GET /api/a/c/~user?q=%2F HTTP/1.1");
  // Dot segments can not be used to leave the route or the root.
  HttpResponse up = c.roundTrip(getRequest("/uploads/../api/x"));
  EXPECT_EQ(up.status, 200);
  EXPECT_EQ(upstream_.lastHead().substr(0, upstream_.lastHead().find("\r\n")), "GET /api/x HTTP/1.1");
  for (const char* bad : {"/api/../../etc/passwd", "/api/a%2Fb", "/api/%2e%2e/%2e%2e/x", "/api/a%00b", "/api/%zz"}) {
    SCOPED_TRACE(bad);
    expectRefused(getRequest(bad), 400, "bad_request");
  }
  expectRefused("TRACE /api/x HTTP/1.1\r\nHost: e2e.test\r\n\r\n", 405, "method_not_allowed");
}

}  // namespace
}  // namespace portcullis::e2e
