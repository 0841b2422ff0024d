// Upload sniffing: Content-Type to kind mapping, and the xlsx/xls magic and
// CSV checks fed whole, split at every byte boundary and byte by byte.
#include "filters/upload_sniff.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace portcullis {
namespace {

using E = UploadSniffer::Error;

UploadSniffer::Result runPieces(UploadKind kind, const std::string& s, const std::vector<size_t>& cuts) {
  UploadSniffer v(kind);
  size_t prev = 0;
  for (size_t c : cuts) {
    v.feed(s.data() + prev, c - prev);
    prev = c;
  }
  v.feed(s.data() + prev, s.size() - prev);
  return v.finish();
}

void expectAllSplits(UploadKind kind, const std::string& s, E want, uint64_t want_off) {
  auto check = [&](const UploadSniffer::Result& r, const std::string& how) {
    EXPECT_EQ(r.error, want) << uploadKindName(kind) << " " << testing::PrintToString(s) << " " << how << ": got "
                             << UploadSniffer::errorName(r.error);
    if (want != E::kNone) {
      EXPECT_EQ(r.offset, want_off) << testing::PrintToString(s) << " " << how;
    }
  };
  check(runPieces(kind, s, {}), "whole");
  for (size_t k = 0; k <= s.size(); ++k) check(runPieces(kind, s, {k}), "split at " + std::to_string(k));
  for (size_t a = 0; a <= s.size(); ++a)
    for (size_t b = a; b <= s.size(); ++b) check(runPieces(kind, s, {a, b}), "split 3");
  std::vector<size_t> all;
  for (size_t k = 1; k < s.size(); ++k) all.push_back(k);
  check(runPieces(kind, s, all), "byte by byte");
}

TEST(UploadSniff, KindForContentType) {
  EXPECT_EQ(uploadKindFor("text/csv"), UploadKind::kCsv);
  EXPECT_EQ(uploadKindFor("Text/CSV; charset=utf-8"), UploadKind::kCsv);
  EXPECT_EQ(uploadKindFor("  text/csv  ;header=present"), UploadKind::kCsv);
  EXPECT_EQ(uploadKindFor("application/vnd.ms-excel"), UploadKind::kXls);
  EXPECT_EQ(uploadKindFor("APPLICATION/VND.MS-EXCEL"), UploadKind::kXls);
  EXPECT_EQ(uploadKindFor("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"), UploadKind::kXlsx);
  EXPECT_EQ(uploadKindFor("Application/Vnd.OpenXmlFormats-OfficeDocument.SpreadsheetML.Sheet; x=y"),
            UploadKind::kXlsx);
  EXPECT_EQ(uploadKindFor("multipart/form-data; boundary=abc"), UploadKind::kMultipart);
  EXPECT_EQ(uploadKindFor("application/json"), UploadKind::kUnsupported);
  EXPECT_EQ(uploadKindFor(""), UploadKind::kUnsupported);
  EXPECT_EQ(uploadKindFor("text/csvx"), UploadKind::kUnsupported);
  EXPECT_EQ(uploadKindFor("text/ csv"), UploadKind::kUnsupported);
  EXPECT_EQ(uploadKindFor("application/octet-stream"), UploadKind::kUnsupported);
  EXPECT_EQ(uploadKindFor("application/zip"), UploadKind::kUnsupported);
  EXPECT_EQ(mediaTypeOf(" text/csv ; charset=x"), "text/csv");
  EXPECT_EQ(mediaTypeOf("a/b"), "a/b");
}

TEST(UploadSniff, XlsxMagic) {
  const std::string zip = std::string("PK\x03\x04\x14\x00\x06\x00", 8) + "[Content_Types].xml";
  expectAllSplits(UploadKind::kXlsx, zip, E::kNone, 0);
  expectAllSplits(UploadKind::kXlsx, std::string("PK\x03\x04", 4), E::kNone, 0);
  expectAllSplits(UploadKind::kXlsx, std::string("PK\x05\x06rest", 8), E::kBadMagic, 2);  // empty-archive record
  expectAllSplits(UploadKind::kXlsx, "pk\x03\x04", E::kBadMagic, 0);
  expectAllSplits(UploadKind::kXlsx, "id,name\n1,x\n", E::kBadMagic, 0);
  expectAllSplits(UploadKind::kXlsx, "PK\x03", E::kTooShort, 3);
  expectAllSplits(UploadKind::kXlsx, "", E::kTooShort, 0);
}

TEST(UploadSniff, XlsMagic) {
  const std::string ole = std::string("\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1\x00\x00\x00", 11);
  expectAllSplits(UploadKind::kXls, ole, E::kNone, 0);
  std::string bad = ole;
  bad[7] = '\xE0';
  expectAllSplits(UploadKind::kXls, bad, E::kBadMagic, 7);
  expectAllSplits(UploadKind::kXls, std::string("PK\x03\x04", 4), E::kBadMagic, 0);
  expectAllSplits(UploadKind::kXls, ole.substr(0, 7), E::kTooShort, 7);
}

TEST(UploadSniff, CsvUsesTheCsvValidator) {
  expectAllSplits(UploadKind::kCsv, "a,b\r\n\"c\",d\r\n", E::kNone, 0);
  expectAllSplits(UploadKind::kCsv, "", E::kNone, 0);
  expectAllSplits(UploadKind::kCsv, "a,b\"", E::kCsv, 3);
  expectAllSplits(UploadKind::kCsv, "\"open", E::kCsv, 5);
  // A spreadsheet declared as CSV fails on its first binary byte.
  expectAllSplits(UploadKind::kCsv, std::string("PK\x03\x04", 4), E::kCsv, 2);
  UploadSniffer s(UploadKind::kCsv);
  s.feed(std::string_view("x\x01"));
  EXPECT_EQ(s.finish().error, E::kCsv);
  EXPECT_EQ(s.csvError(), CsvValidator::Error::kControlChar);
}

TEST(UploadSniff, UnsupportedKindsAreRefused) {
  UploadSniffer a(UploadKind::kUnsupported);
  EXPECT_EQ(a.feed("x", 1).error, E::kUnsupportedType);
  UploadSniffer m(UploadKind::kMultipart);
  EXPECT_EQ(m.finish().error, E::kUnsupportedType);
}

}  // namespace
}  // namespace portcullis
