// MultipartParser: boundary extraction, well-formed bodies (events and part
// data), and every refusal, each body checked whole, split at every byte
// boundary, in three pieces (short bodies) and in slices of every length up
// to twice the delimiter's at every phase (byte by byte included): the events
// (with part data concatenated), the error and its offset must not change.
#include "filters/multipart_parser.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "filters/upload_sniff.h"
#include "tests/upload_samples.h"

namespace portcullis {
namespace {

using testing_samples::xlsxHead;


using E = MultipartParser::Error;

// Records events as text: B[index name filename? ct] D<data> E
struct Recorder : MultipartHandler {
  std::string log;
  bool in_data = false;
  bool onPartBegin(const MultipartPart& p) override {
    log += "B[" + std::to_string(p.index) + " name=" + std::string(p.name);
    if (p.has_filename) log += " file=" + std::string(p.filename);
    if (!p.content_type.empty()) log += " ct=" + std::string(p.content_type);
    log += "]";
    in_data = false;
    return true;
  }
  bool onPartData(const char* p, size_t n) override {
    EXPECT_GT(n, 0u);
    if (!in_data) log += "D<";
    else log.pop_back();  // merge with the previous slice
    log.append(p, n);
    log += ">";
    in_data = true;
    return true;
  }
  bool onPartEnd() override {
    log += "E";
    in_data = false;
    return true;
  }
};

struct Outcome {
  MultipartParser::Result r;
  std::string log;
};

Outcome runPieces(const std::string& s, const std::vector<size_t>& cuts, const MultipartLimits& lim,
                  std::string_view boundary = "XyZ") {
  Recorder rec;
  MultipartParser p(boundary, rec, lim);
  size_t prev = 0;
  for (size_t c : cuts) {
    p.feed(s.data() + prev, c - prev);
    prev = c;
  }
  p.feed(s.data() + prev, s.size() - prev);
  return {p.finish(), rec.log};
}

// Checks every split; returns the log of the whole-body run.
std::string expectAllSplits(const std::string& s, E want, uint64_t want_off, const MultipartLimits& lim = {},
                            std::string_view boundary = "XyZ") {
  const Outcome whole = runPieces(s, {}, lim, boundary);
  auto check = [&](const Outcome& o, const std::string& how) {
    EXPECT_EQ(o.r.error, want) << testing::PrintToString(s) << " " << how << ": got "
                               << MultipartParser::errorName(o.r.error) << " want " << MultipartParser::errorName(want);
    if (want != E::kNone) {
      EXPECT_EQ(o.r.offset, want_off) << testing::PrintToString(s) << " " << how;
    }
    EXPECT_EQ(o.log, whole.log) << testing::PrintToString(s) << " " << how;
  };
  check(whole, "whole");
  for (size_t k = 0; k <= s.size(); ++k) check(runPieces(s, {k}, lim, boundary), "split at " + std::to_string(k));
  if (s.size() <= 120) {
    for (size_t a = 0; a <= s.size(); ++a)
      for (size_t b = a; b <= s.size(); ++b) check(runPieces(s, {a, b}, lim, boundary), "split 3");
  }
  // Slices of every length up to a little over twice the delimiter's, at
  // every phase: the bytes held between slices (a partial delimiter and the
  // bytes before it) build up over several short slices.
  for (size_t len = 1; len <= 2 * (boundary.size() + 4) + 2 && len < s.size(); ++len) {
    for (size_t phase = 0; phase < len; ++phase) {
      std::vector<size_t> cuts;
      for (size_t k = phase == 0 ? len : phase; k < s.size(); k += len) cuts.push_back(k);
      check(runPieces(s, cuts, lim, boundary), "slices of " + std::to_string(len) + " from " + std::to_string(phase));
    }
  }
  return whole.log;
}

const std::string kCd = "Content-Disposition: form-data; name=";

TEST(MultipartBoundary, FromContentType) {
  std::string_view b;
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=XyZ", b), BoundaryError::kNone);
  EXPECT_EQ(b, "XyZ");
  EXPECT_EQ(multipartBoundary("Multipart/Form-Data;boundary=\"a b c\"", b), BoundaryError::kNone);
  EXPECT_EQ(b, "a b c");
  EXPECT_EQ(multipartBoundary("multipart/form-data; charset=utf-8; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW", b),
            BoundaryError::kNone);
  EXPECT_EQ(b, "----WebKitFormBoundary7MA4YWxkTrZu0gW");
  EXPECT_EQ(multipartBoundary("multipart/form-data; BOUNDARY=\"a:b/c?d=e,f(g)h+i'j\"", b), BoundaryError::kNone);
  EXPECT_EQ(b, "a:b/c?d=e,f(g)h+i'j");
  EXPECT_EQ(multipartBoundary("multipart/form-data;boundary=x ", b), BoundaryError::kNone);
  EXPECT_EQ(b, "x");
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=" + std::string(70, 'a'), b), BoundaryError::kNone);

  // Empty parameters are allowed (RFC 9110 §5.6.6); a quoted-pair anywhere is not.
  EXPECT_EQ(multipartBoundary("multipart/form-data;; boundary=x;", b), BoundaryError::kNone);
  EXPECT_EQ(b, "x");
  EXPECT_EQ(multipartBoundary("multipart/form-data; a=\"q\\\"\"; boundary=x", b), BoundaryError::kBadSyntax);

  EXPECT_EQ(multipartBoundary("multipart/form-data", b), BoundaryError::kMissing);
  EXPECT_EQ(multipartBoundary("multipart/form-data; charset=x", b), BoundaryError::kMissing);
  EXPECT_EQ(multipartBoundary("multipart/mixed; boundary=x", b), BoundaryError::kNotMultipartFormData);
  EXPECT_EQ(multipartBoundary("text/csv; boundary=x", b), BoundaryError::kNotMultipartFormData);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=x; boundary=y", b), BoundaryError::kDuplicate);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=" + std::string(71, 'a'), b), BoundaryError::kBadBoundary);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=\"abc \"", b), BoundaryError::kBadBoundary);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=\"\"", b), BoundaryError::kBadBoundary);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=a*b", b), BoundaryError::kBadBoundary);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=\"a\\\\b\"", b), BoundaryError::kBadSyntax);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=", b), BoundaryError::kBadSyntax);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=\"abc", b), BoundaryError::kBadSyntax);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary=a:b", b), BoundaryError::kBadSyntax);
  EXPECT_EQ(multipartBoundary("multipart/form-data boundary=x", b), BoundaryError::kBadSyntax);
  EXPECT_EQ(multipartBoundary("multipart/form-data; boundary x", b), BoundaryError::kBadSyntax);

  EXPECT_TRUE(validBoundary("XyZ"));
  EXPECT_FALSE(validBoundary(""));
  EXPECT_FALSE(validBoundary("a\r"));
}

TEST(MultipartParser, WellFormedBodies) {
  const std::string basic = "--XyZ\r\n" + kCd + "\"field1\"\r\n\r\nvalue1\r\n--XyZ\r\n" + kCd +
                            "\"file\"; filename=\"a.csv\"\r\nContent-Type: text/csv\r\n\r\na,b\r\n1,2\r\n\r\n--XyZ--\r\n";
  EXPECT_EQ(expectAllSplits(basic, E::kNone, 0),
            "B[0 name=field1]D<value1>EB[1 name=file file=a.csv ct=text/csv]D<a,b\r\n1,2\r\n>E");

  // Preamble, epilogue, padding after boundaries, no CRLF after the close.
  EXPECT_EQ(expectAllSplits("preamble text\r\n--XyZ \t\r\n" + kCd + "a\r\n\r\nx\r\n--XyZ-- \r\nepilogue\r\n", E::kNone, 0),
            "B[0 name=a]D<x>E");
  EXPECT_EQ(expectAllSplits("\r\n--XyZ\r\n" + kCd + "a\r\n\r\nx\r\n--XyZ--", E::kNone, 0), "B[0 name=a]D<x>E");
  EXPECT_EQ(expectAllSplits("--XyZ--", E::kNone, 0), "");

  // Near-misses of the delimiter inside a body are data.
  EXPECT_EQ(expectAllSplits("--XyZ\r\n" + kCd + "a\r\n\r\na\r\n--XyQ\r\r\n-\r\n--Xy\r\r\n--XyZ--", E::kNone, 0),
            "B[0 name=a]D<a\r\n--XyQ\r\r\n-\r\n--Xy\r>E");
  // A body that is only CRs and a delimiter prefix.
  EXPECT_EQ(expectAllSplits("--XyZ\r\n" + kCd + "a\r\n\r\n\r\r\r\n\r\n-\r\n--XyZ--", E::kNone, 0),
            "B[0 name=a]D<\r\r\r\n\r\n->E");
  // Empty part body, several headers, header names case-insensitive, quoted
  // names with escapes, filename="" (a file input left empty), CTE binary.
  EXPECT_EQ(expectAllSplits("--XyZ\r\ncontent-disposition:form-data;name=\"a\\\"b\"; FILENAME=\"\"\r\n"
                            "CONTENT-TYPE: application/octet-stream \r\nContent-Transfer-Encoding: binary\r\n"
                            "X-Other: y\r\n\r\n\r\n--XyZ\r\n" + kCd + "plain\r\n\r\n\r\n\r\n--XyZ--",
                            E::kNone, 0),
            "B[0 name=a\"b file= ct=application/octet-stream]EB[1 name=plain]D<\r\n>E");
  // The preamble may look like headers and hold near-boundaries.
  EXPECT_EQ(expectAllSplits("--XyQ\r\n-XyZ\r\n--XyZ\r\n" + kCd + "a\r\n\r\n1\r\n--XyZ--", E::kNone, 0),
            "B[0 name=a]D<1>E");
}

TEST(MultipartParser, Refusals) {
  struct Case {
    const char* name;
    std::string body;
    E error;
    uint64_t offset;
    MultipartLimits lim;
  };
  MultipartLimits small_pre;
  small_pre.max_preamble_bytes = 4;
  MultipartLimits no_pre;
  no_pre.max_preamble_bytes = 0;
  MultipartLimits small_epi;
  small_epi.max_epilogue_bytes = 3;
  MultipartLimits small_epi_10;
  small_epi_10.max_epilogue_bytes = 10;
  MultipartLimits small_pre_10;
  small_pre_10.max_preamble_bytes = 10;
  MultipartLimits two_headers;
  two_headers.max_headers = 2;
  MultipartLimits small_head;
  small_head.max_head_bytes = 50;
  MultipartLimits one_part;
  one_part.max_parts = 1;

  const std::string part_a = kCd + "a\r\n\r\nx\r\n--XyZ";
  const std::string two = "--XyZ\r\n" + part_a + "\r\n" + part_a + "--";
  const std::string unterminated = "--XyZ\r\n" + kCd + "a\r\n\r\nvalue";
  const std::string lf_head = "--XyZ\r\n" + kCd + "a\n\r\n";
  const std::string cr_head = "--XyZ\r\n" + kCd + "a\rX";
  const std::string no_cd = "--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--";
  const std::string big_head = "--XyZ\r\n" + kCd + "\"" + std::string(40, 'n') + "\"\r\n\r\n--XyZ--";

  const std::vector<Case> cases = {
      {"empty", "", E::kMissingFinalBoundary, 0, {}},
      {"only_preamble", "abc", E::kMissingFinalBoundary, 3, {}},
      {"unterminated", unterminated, E::kMissingFinalBoundary, unterminated.size(), {}},
      {"no_close", "--XyZ\r\n" + part_a, E::kMissingFinalBoundary, 7 + part_a.size(), {}},
      {"close_bare_cr", "--XyZ--\r", E::kMissingFinalBoundary, 8, {}},
      {"half_close", "--XyZ-", E::kMissingFinalBoundary, 6, {}},
      {"garbage_after_boundary", "--XyZx\r\n", E::kBadBoundaryLine, 5, {}},
      {"garbage_after_padding", "--XyZ x\r\n", E::kBadBoundaryLine, 6, {}},
      {"single_dash_close", "--XyZ-x", E::kBadBoundaryLine, 6, {}},
      {"cr_without_lf", "--XyZ\rx", E::kBadBoundaryLine, 6, {}},
      {"garbage_after_close", "--XyZ--x", E::kBadBoundaryLine, 7, {}},
      {"close_cr_without_lf", "--XyZ--\rx", E::kBadBoundaryLine, 8, {}},
      {"delimiter_inside_body", "--XyZ\r\n" + kCd + "a\r\n\r\nab\r\n--XyZabc\r\n--XyZ--", E::kBadBoundaryLine,
       7 + kCd.size() + 5 + 2 + 7, {}},
      // "--" boundary without the CRLF of a delimiter: other parsers take a
      // bare LF (or a boundary in mid-line) as one and see other parts.
      {"boundary_after_bare_lf", "--XyZ\r\n" + kCd + "a\r\n\r\nhi\n--XyZ\n" + kCd + "b\n\nMZ\r\n--XyZ--",
       E::kBadBoundaryLine, 7 + kCd.size() + 5 + 3, {}},
      {"boundary_mid_line_in_body", "--XyZ\r\n" + kCd + "a\r\n\r\nx--XyZ\r\n--XyZ--", E::kBadBoundaryLine,
       7 + kCd.size() + 5 + 1, {}},
      {"boundary_in_preamble", "junk--XyZ\r\n" + kCd + "a\r\n\r\nx\r\n--XyZ--", E::kBadBoundaryLine, 4, {}},
      {"boundary_in_epilogue", "--XyZ\r\n" + part_a + "--\r\nepi--XyZ\r\n", E::kBadBoundaryLine,
       7 + part_a.size() + 4 + 3, {}},
      // Of two errors, the one whose last byte comes first, however split.
      {"epilogue_limit_before_boundary", "--XyZ--\r\nab--XyZ", E::kEpilogueTooLarge, 9 + 3, small_epi},
      {"boundary_before_epilogue_limit", "--XyZ--\r\n--XyZ", E::kBadBoundaryLine, 9, small_epi_10},
      {"preamble_limit_before_boundary", "abc--XyZ\r\n", E::kPreambleTooLarge, 4, small_pre},
      {"boundary_before_preamble_limit", "a--XyZ\r\n", E::kBadBoundaryLine, 1, small_pre_10},
      {"preamble_too_large", "hello world\r\n--XyZ--", E::kPreambleTooLarge, 4, small_pre},
      {"preamble_forbidden", "x\r\n--XyZ--", E::kPreambleTooLarge, 0, no_pre},
      {"preamble_crlf_forbidden_ok_check", "\r\n\r\n--XyZ--", E::kPreambleTooLarge, 0, no_pre},
      {"epilogue_too_large", "--XyZ--\r\nabcd", E::kEpilogueTooLarge, 12, small_epi},
      {"bare_lf_in_head", lf_head, E::kBadLineEnding, lf_head.size() - 3, {}},
      {"bare_cr_in_head", cr_head, E::kBadLineEnding, cr_head.size() - 1, {}},
      {"missing_cd", no_cd, E::kMissingContentDisposition, no_cd.find("\r\n\r\n") + 3, {}},
      {"duplicate_cd", "--XyZ\r\n" + kCd + "a\r\n" + kCd + "b\r\n\r\n--XyZ--", E::kDuplicateHeader,
       7 + kCd.size() + 3, {}},
      {"duplicate_ct", "--XyZ\r\n" + kCd + "a\r\nContent-Type: a/b\r\ncontent-type: c/d\r\n\r\n--XyZ--",
       E::kDuplicateHeader, 7 + kCd.size() + 3 + 19, {}},
      {"cd_attachment", "--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\n--XyZ--", E::kBadContentDisposition, 7,
       {}},
      {"cd_without_name", "--XyZ\r\nContent-Disposition: form-data; filename=a\r\n\r\n--XyZ--",
       E::kBadContentDisposition, 7, {}},
      {"cd_filename_star", "--XyZ\r\n" + kCd + "a; filename*=UTF-8''x.csv\r\n\r\n--XyZ--", E::kBadContentDisposition, 7,
       {}},
      {"cd_duplicate_name", "--XyZ\r\n" + kCd + "a; name=b\r\n\r\n--XyZ--", E::kBadContentDisposition, 7, {}},
      {"cd_duplicate_filename", "--XyZ\r\n" + kCd + "a; filename=x; filename=y\r\n\r\n--XyZ--",
       E::kBadContentDisposition, 7, {}},
      {"cd_unterminated_quote", "--XyZ\r\n" + kCd + "\"a\r\n\r\n--XyZ--", E::kBadContentDisposition, 7, {}},
      {"cd_garbage", "--XyZ\r\n" + kCd + "a b\r\n\r\n--XyZ--", E::kBadContentDisposition, 7, {}},
      {"obs_fold", "--XyZ\r\n" + kCd + "a\r\n filename=x\r\n\r\n--XyZ--", E::kBadHeader, 7 + kCd.size() + 3, {}},
      {"space_before_colon", "--XyZ\r\nContent-Type : a/b\r\n\r\n--XyZ--", E::kBadHeader, 7 + 12, {}},
      {"no_colon", "--XyZ\r\nContent-Type\r\n\r\n--XyZ--", E::kBadHeader, 7 + 12, {}},
      {"empty_name", "--XyZ\r\n: x\r\n\r\n--XyZ--", E::kBadHeader, 7, {}},
      {"ctl_in_value", std::string("--XyZ\r\n") + "X-A: a\x01" + "b\r\n\r\n--XyZ--", E::kBadHeader, 7 + 6, {}},
      {"nul_in_value", std::string("--XyZ\r\nX-A: a\0b\r\n\r\n--XyZ--", 26), E::kBadHeader, 7 + 6, {}},
      {"cte_base64", "--XyZ\r\n" + kCd + "a\r\nContent-Transfer-Encoding: base64\r\n\r\n--XyZ--",
       E::kBadTransferEncoding, 7 + kCd.size() + 3, {}},
      {"too_many_headers", "--XyZ\r\n" + kCd + "a\r\nA: 1\r\nB: 2\r\n\r\n--XyZ--", E::kTooManyHeaders,
       7 + kCd.size() + 3 + 6, two_headers},
      {"head_too_large", big_head, E::kHeadTooLarge, 7 + 50, small_head},
      {"too_many_parts", two, E::kTooManyParts, 7 + part_a.size() + 1, one_part},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    expectAllSplits(c.body, c.error, c.offset, c.lim);
  }
}

// One search for "--" boundary tells delimiters (a CRLF before it in the same
// content run, or the start of the body) from bare strings; the edges of
// that: what precedes the string at a run's start, a CR or CRLF at a slice's
// end, boundaries that begin like their own "--", limits against a partial
// delimiter. The logs show that part data stops right before a bare string.
TEST(MultipartParser, DelimiterOrBareBoundary) {
  const std::string head = "--XyZ\r\n" + kCd + "a\r\n\r\n";  // part 0's body starts after it
  const uint64_t b0 = head.size();

  // The start of the body: only "--" boundary right at offset 0 has the
  // (optional) CRLF of a delimiter before it.
  EXPECT_EQ(expectAllSplits("\r\r\n--XyZ\r\n" + kCd + "a\r\n\r\nx\r\n--XyZ--", E::kNone, 0), "B[0 name=a]D<x>E");
  EXPECT_EQ(expectAllSplits("-\r\n--XyZ--", E::kNone, 0), "");
  expectAllSplits("\n--XyZ\r\n" + kCd + "a\r\n\r\nx\r\n--XyZ--", E::kBadBoundaryLine, 1);
  expectAllSplits("\r--XyZ\r\n" + kCd + "a\r\n\r\nx\r\n--XyZ--", E::kBadBoundaryLine, 1);
  expectAllSplits("---XyZ\r\n" + kCd + "a\r\n\r\nx\r\n--XyZ--", E::kBadBoundaryLine, 1);
  expectAllSplits("----XyZ--", E::kBadBoundaryLine, 2);

  // A part body's first bytes: the CRLF before them ends the head, it is not
  // a delimiter's.
  EXPECT_EQ(expectAllSplits(head + "--XyZ--", E::kBadBoundaryLine, b0), "B[0 name=a]");
  EXPECT_EQ(expectAllSplits(head + "\r\n--XyZ--", E::kNone, 0), "B[0 name=a]E");
  EXPECT_EQ(expectAllSplits(head + "\n--XyZ--", E::kBadBoundaryLine, b0 + 1), "B[0 name=a]D<\n>");
  // A CR, a CRLF, a bare LF before the string, in front of a delimiter too.
  EXPECT_EQ(expectAllSplits(head + "ab\r\r\n--XyZ--", E::kNone, 0), "B[0 name=a]D<ab\r>E");
  EXPECT_EQ(expectAllSplits(head + "ab\r\n\r\n--XyZ--", E::kNone, 0), "B[0 name=a]D<ab\r\n>E");
  EXPECT_EQ(expectAllSplits(head + "ab\r--XyZ\r\n--XyZ--", E::kBadBoundaryLine, b0 + 3), "B[0 name=a]D<ab\r>");
  EXPECT_EQ(expectAllSplits(head + "ab\n\r\n--XyZ--", E::kNone, 0), "B[0 name=a]D<ab\n>E");
  // "--" boundary one dash late: a delimiter's CRLF is two bytes before it.
  EXPECT_EQ(expectAllSplits(head + "a\r\n---XyZ\r\n--XyZ--", E::kBadBoundaryLine, b0 + 4), "B[0 name=a]D<a\r\n->");
  EXPECT_EQ(expectAllSplits(head + "a\r\n-\r\n--XyZ--", E::kNone, 0), "B[0 name=a]D<a\r\n->E");
  // A delimiter prefix that fails, then the string in what followed it.
  EXPECT_EQ(expectAllSplits(head + "\r\n--Xy--XyZ\r\n--XyZ--", E::kBadBoundaryLine, b0 + 6),
            "B[0 name=a]D<\r\n--Xy>");
  // In the epilogue every "--" boundary is bare, with a CRLF before it too.
  expectAllSplits("--XyZ--\r\nx\r\n--XyZ--", E::kBadBoundaryLine, 12);
  expectAllSplits("--XyZ--\r\n--XyZ--", E::kBadBoundaryLine, 9);
  // In a later part's body.
  EXPECT_EQ(expectAllSplits(head + "1\r\n--XyZ\r\n" + kCd + "b\r\n\r\n2--XyZ--", E::kBadBoundaryLine,
                            b0 + 10 + kCd.size() + 5 + 1),
            "B[0 name=a]D<1>EB[1 name=b]D<2>");

  // A partial delimiter at the end is not preamble (yet), nor is the start of
  // the body while it can still become the first delimiter.
  MultipartLimits pre4;
  pre4.max_preamble_bytes = 4;
  MultipartLimits pre0;
  pre0.max_preamble_bytes = 0;
  EXPECT_EQ(expectAllSplits("abcd\r\n--XyZ--", E::kNone, 0, pre4), "");
  expectAllSplits("abcd\r\n--Xy", E::kMissingFinalBoundary, 10, pre4);
  expectAllSplits("abcd\r\n--XyQ--XyZ", E::kPreambleTooLarge, 4, pre4);
  expectAllSplits("abcd\r\r\n--XyZ--", E::kPreambleTooLarge, 4, pre4);
  expectAllSplits("--Xy", E::kMissingFinalBoundary, 4, pre0);
  expectAllSplits("--XQ", E::kPreambleTooLarge, 0, pre0);
  expectAllSplits("\r\n--Xy", E::kMissingFinalBoundary, 6, pre0);
  expectAllSplits("\r\n\r\n--Xy", E::kPreambleTooLarge, 0, pre0);
  // A bare string wins if it ends before the preamble's first byte over the
  // limit (here its last byte is that one, then the one before).
  MultipartLimits pre5;
  pre5.max_preamble_bytes = 5;
  expectAllSplits("a--XyZ\r\n--XyZ--", E::kPreambleTooLarge, 5, pre5);
  MultipartLimits pre6 = pre5;
  pre6.max_preamble_bytes = 6;
  expectAllSplits("a--XyZ\r\n--XyZ--", E::kBadBoundaryLine, 1, pre6);

  // What the handler has not seen at the end of an unterminated part: the
  // partial delimiter and the fewer than "--" boundary bytes before it.
  EXPECT_EQ(expectAllSplits(head + "value\r\n--Xy", E::kMissingFinalBoundary, b0 + 11), "B[0 name=a]D<v>");
  EXPECT_EQ(expectAllSplits(head + "values", E::kMissingFinalBoundary, b0 + 6), "B[0 name=a]D<va>");
}

// Boundaries that begin with dashes, so that "--" boundary overlaps itself
// and the dashes of a delimiter or a close delimiter.
TEST(MultipartParser, DashBoundaries) {
  const std::string cd = kCd + "a\r\n\r\n";
  // "-": delimiter "\r\n---", close "\r\n-----".
  EXPECT_EQ(expectAllSplits("---\r\n" + cd + "x\r\n---\r\n" + cd + "y\r\n-----", E::kNone, 0, {}, "-"),
            "B[0 name=a]D<x>EB[1 name=a]D<y>E");
  EXPECT_EQ(expectAllSplits("---\r\n" + cd + "x----\r\n-----", E::kBadBoundaryLine, 5 + cd.size() + 1, {}, "-"),
            "B[0 name=a]D<x>");
  EXPECT_EQ(expectAllSplits("---\r\n" + cd + "x--\r\n-----", E::kNone, 0, {}, "-"), "B[0 name=a]D<x-->E");
  // "\r\n----" is a delimiter and a '-', then not a close delimiter.
  EXPECT_EQ(expectAllSplits("---\r\n" + cd + "x\r\n----\r\n", E::kBadBoundaryLine, 5 + cd.size() + 7, {}, "-"),
            "B[0 name=a]D<x>E");
  // "----": the first delimiter, then a close delimiter's first dash only.
  expectAllSplits("----\r\n" + cd + "x\r\n-----", E::kBadBoundaryLine, 4, {}, "-");
  // "-X": "---X".
  EXPECT_EQ(expectAllSplits("\r\n---X\r\n" + cd + "\r\n-\r\n---X--", E::kNone, 0, {}, "-X"), "B[0 name=a]D<\r\n->E");
  EXPECT_EQ(expectAllSplits("---X\r\n" + cd + "\r\n----X--", E::kBadBoundaryLine, 6 + cd.size() + 3, {}, "-X"),
            "B[0 name=a]D<\r\n->");
  EXPECT_EQ(expectAllSplits("---X\r\n" + cd + "--\r\n---X-----X--", E::kBadBoundaryLine, 6 + cd.size() + 10, {}, "-X"),
            "B[0 name=a]D<-->E");
}

// Browser-length and maximal boundaries: longer than many slices, so a
// delimiter or a bare string spans several of them.
TEST(MultipartParser, LongBoundaries) {
  for (const std::string& b : {std::string("----WebKitFormBoundary7MA4YWxkTrZu0gW"), std::string(70, 'b'),
                               std::string(69, '-') + "z"}) {
    SCOPED_TRACE(b);
    const std::string d = "--" + b;
    const std::string cd = kCd + "f; filename=\"a.csv\"\r\nContent-Type: text/csv\r\n\r\n";
    const std::string near = "\r\n" + d.substr(0, d.size() - 1) + "\r\r\n" + d.substr(1);
    EXPECT_EQ(expectAllSplits("pre\r\n" + d + "\r\n" + cd + "a,b" + near + "\r\n" + d + "--\r\nepi", E::kNone, 0, {}, b),
              "B[0 name=f file=a.csv ct=text/csv]D<a,b" + near + ">E");
    const uint64_t body = 5 + d.size() + 2 + cd.size();
    EXPECT_EQ(expectAllSplits("pre\r\n" + d + "\r\n" + cd + "a,b\n" + d + "\r\n" + d + "--", E::kBadBoundaryLine,
                              body + 4, {}, b),
              "B[0 name=f file=a.csv ct=text/csv]D<a,b\n>");
    expectAllSplits("pre" + d + "\r\n" + d + "--", E::kBadBoundaryLine, 3, {}, b);
    expectAllSplits(d + "--\r\nepi" + d, E::kBadBoundaryLine, d.size() + 7, {}, b);
    EXPECT_EQ(expectAllSplits(d + "\r\n" + cd + "x\r\n" + d.substr(0, d.size() - 2), E::kMissingFinalBoundary,
                              d.size() + 2 + cd.size() + 3 + d.size() - 2, {}, b),
              "B[0 name=f file=a.csv ct=text/csv]");
  }
}

TEST(MultipartParser, BadBoundaryInConstructor) {
  Recorder rec;
  MultipartParser p("", rec);
  EXPECT_EQ(p.feed("--\r\n", 4).error, E::kBadBoundary);
}

// The intended use: sniff every file part against its declared type.
struct SniffingHandler : MultipartHandler {
  UploadSniffer sniffer{UploadKind::kUnsupported};
  bool file = false;
  std::string failure;
  bool onPartBegin(const MultipartPart& p) override {
    file = p.has_filename;
    if (!file) return true;
    const UploadKind k = uploadKindFor(p.content_type);
    if (k == UploadKind::kUnsupported || k == UploadKind::kMultipart) {
      failure = "type";
      return false;
    }
    sniffer = UploadSniffer(k);
    return true;
  }
  bool onPartData(const char* d, size_t n) override {
    if (file && !sniffer.feed(d, n).ok()) {
      failure = "sniff";
      return false;
    }
    return true;
  }
  bool onPartEnd() override {
    if (file && !sniffer.finish().ok()) {
      failure = "sniff";
      return false;
    }
    return true;
  }
};

TEST(MultipartParser, DrivesUploadSniffers) {
  auto run = [](const std::string& body, size_t chunk) {
    SniffingHandler h;
    MultipartParser p("XyZ", h);
    for (size_t i = 0; i < body.size(); i += chunk) p.feed(body.data() + i, std::min(chunk, body.size() - i));
    const auto r = p.finish();
    return r.ok() ? std::string("ok") : std::string(MultipartParser::errorName(r.error)) + ":" + h.failure;
  };
  const std::string xlsx = xlsxHead() + std::string("\r\n--XyY\r\n\x00\x01", 11);
  const std::string good = "--XyZ\r\n" + kCd + "note\r\n\r\nhello\r\n--XyZ\r\n" + kCd +
                           "f1; filename=\"a.csv\"\r\nContent-Type: text/csv\r\n\r\n\"a\",b\r\n1,2\r\n--XyZ\r\n" + kCd +
                           "f2; filename=\"b.xlsx\"\r\nContent-Type: "
                           "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet\r\n\r\n" +
                           xlsx + "\r\n--XyZ--\r\n";
  const std::string bad_csv = "--XyZ\r\n" + kCd + "f; filename=\"a.csv\"\r\nContent-Type: text/csv\r\n\r\n" + xlsx +
                              "\r\n--XyZ--\r\n";
  const std::string bad_type = "--XyZ\r\n" + kCd + "f; filename=\"a.exe\"\r\nContent-Type: application/x-msdownload\r\n\r\n"
                               "MZ\r\n--XyZ--\r\n";
  const std::string short_xls = "--XyZ\r\n" + kCd + "f; filename=\"a.xls\"\r\nContent-Type: application/vnd.ms-excel\r\n\r\n"
                                "\xD0\xCF\x11\r\n--XyZ--\r\n";
  for (size_t chunk : {size_t{1}, size_t{2}, size_t{5}, size_t{64}, size_t{100000}}) {
    EXPECT_EQ(run(good, chunk), "ok") << chunk;
    EXPECT_EQ(run(bad_csv, chunk), "aborted:sniff") << chunk;
    EXPECT_EQ(run(bad_type, chunk), "aborted:type") << chunk;
    EXPECT_EQ(run(short_xls, chunk), "aborted:sniff") << chunk;
  }
}

TEST(MultipartParser, LargeBodyAnyChunking) {
  std::string csv;
  for (int i = 0; i < 5000; ++i) csv += std::to_string(i) + ",name " + std::to_string(i) + ",\"x\"\r\n";
  std::string body;
  for (int part = 0; part < 3; ++part)
    body += "--XyZ\r\n" + kCd + "\"f" + std::to_string(part) + "\"; filename=\"f.csv\"\r\nContent-Type: text/csv\r\n\r\n" +
            csv + "\r\n";
  body += "--XyZ--\r\n";
  const Outcome whole = runPieces(body, {}, {});
  ASSERT_TRUE(whole.r.ok());
  for (size_t chunk : {size_t{1}, size_t{3}, size_t{7}, size_t{4096}}) {
    std::vector<size_t> cuts;
    for (size_t i = chunk; i < body.size(); i += chunk) cuts.push_back(i);
    const Outcome o = runPieces(body, cuts, {});
    EXPECT_TRUE(o.r.ok()) << chunk;
    EXPECT_EQ(o.log, whole.log) << chunk;
  }
  EXPECT_EQ(whole.log.size(), 3 * (csv.size() + 3) + 3 * std::string("B[0 name=f0 file=f.csv ct=text/csv]E").size());
}


// Random mutations of valid texts, each fed whole and in random slices (seeded,
// so reproducible): the outcome and the offset must agree.
std::string mutate(std::string s, std::mt19937& rng, const std::string& alphabet) {
  const int muts = static_cast<int>(rng() % 4);
  for (int m = 0; m < muts; ++m) {
    const size_t pos = rng() % (s.size() + 1);
    const char c = alphabet[rng() % alphabet.size()];
    switch (rng() % 3) {
      case 0: s.insert(pos, 1, c); break;
      case 1: if (pos < s.size()) s.erase(pos, 1); break;
      default: if (pos < s.size()) s[pos] = c; break;
    }
  }
  return s;
}

TEST(MultipartParser, RandomMutationsAreSplitInvariant) {
  std::mt19937 rng(4242);
  const std::string seed = "pre\r\n--XyZ\r\n" + kCd + "\"a\"; filename=\"f\"\r\nContent-Type: text/csv\r\n\r\nab\r\n--Xy\r\r\n--XyZ\r\n" +
                           kCd + "b\r\n\r\n\r\n--XyZ-- \r\nepilogue";
  const std::string alphabet = "\r\n-XyZ\";: =ab\t";
  for (int it = 0; it < 20000; ++it) {
    const std::string s = mutate(seed, rng, alphabet);
    std::vector<size_t> cuts;
    for (size_t i = 0; i < s.size();) {
      i += rng() % 12;
      if (i < s.size()) cuts.push_back(i);
    }
    const Outcome a = runPieces(s, {}, {});
    const Outcome b = runPieces(s, cuts, {});
    ASSERT_EQ(a.r.error, b.r.error) << testing::PrintToString(s);
    ASSERT_EQ(a.r.offset, b.r.offset) << testing::PrintToString(s);
    ASSERT_EQ(a.log, b.log) << testing::PrintToString(s);
  }
}

// The same over boundaries that overlap their own "--" or a delimiter's
// dashes, and a browser's, with small preamble and epilogue limits every
// other time, in slices shorter and longer than the delimiter.
TEST(MultipartParser, RandomMutationsAreSplitInvariantForAnyBoundary) {
  std::mt19937 rng(777);
  MultipartLimits small;
  small.max_preamble_bytes = 12;
  small.max_epilogue_bytes = 12;
  for (const std::string b : {"-", "-X", "XyZ", "--X--", "----WebKitFormBoundary7MA4YWxkTrZu0gW"}) {
    const std::string d = "--" + b;
    const std::string seed = "p\r\n" + d + "\r\n" + kCd + "\"a\"\r\n\r\nab\r\n" + d.substr(0, d.size() - 1) + "\r\r\n" + d +
                             "\r\n" + kCd + "b\r\n\r\n\r\n" + d + "-- \r\nep";
    const std::string alphabet = "\r\n-" + b.substr(b.size() - 1) + "a";
    for (int it = 0; it < 4000; ++it) {
      const std::string s = mutate(seed, rng, alphabet);
      const MultipartLimits lim = it % 2 ? small : MultipartLimits{};
      std::vector<size_t> cuts;
      for (size_t i = 0; i < s.size();) {
        i += rng() % (d.size() + 3);
        if (i < s.size()) cuts.push_back(i);
      }
      const Outcome a = runPieces(s, {}, lim, b);
      const Outcome c = runPieces(s, cuts, lim, b);
      ASSERT_EQ(a.r.error, c.r.error) << b << " " << testing::PrintToString(s);
      ASSERT_EQ(a.r.offset, c.r.offset) << b << " " << testing::PrintToString(s);
      ASSERT_EQ(a.log, c.log) << b << " " << testing::PrintToString(s);
    }
  }
}

}  // namespace
}  // namespace portcullis
