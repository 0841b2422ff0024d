// Upload sniffing: Content-Type to kind mapping, and the xlsx/xls magic and
// CSV checks fed whole, split at every byte boundary and byte by byte.
#include "filters/upload_sniff.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/upload_samples.h"

namespace portcullis {
namespace {

using testing_samples::xlsxHead;
using testing_samples::xlsHead;

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
  expectAllSplits(UploadKind::kXlsx, xlsxHead() + std::string("\x00\x01rest", 6), E::kNone, 0);
  expectAllSplits(UploadKind::kXlsx, xlsxHead("xl/workbook.xml", 0, 0), E::kNone, 0);
  expectAllSplits(UploadKind::kXlsx, xlsxHead("_rels/.rels"), E::kNone, 0);
  expectAllSplits(UploadKind::kXlsx, xlsxHead("docProps/app.xml"), E::kNone, 0);
  expectAllSplits(UploadKind::kXlsx, std::string("PK\x05\x06rest", 8), E::kBadMagic, 2);  // empty-archive record
  expectAllSplits(UploadKind::kXlsx, "pk\x03\x04", E::kBadMagic, 0);
  expectAllSplits(UploadKind::kXlsx, "id,name\n1,x\n", E::kBadMagic, 0);
  expectAllSplits(UploadKind::kXlsx, "PK\x03", E::kTooShort, 3);
  expectAllSplits(UploadKind::kXlsx, "", E::kTooShort, 0);
  // The magic alone, or in front of something else, is not an xlsx.
  expectAllSplits(UploadKind::kXlsx, std::string("PK\x03\x04", 4), E::kTooShort, 4);
  expectAllSplits(UploadKind::kXlsx, std::string("PK\x03\x04MZ\x90\x00this is an exe and more bytes", 36), E::kBadHeader, 4);
  expectAllSplits(UploadKind::kXlsx, xlsxHead("payload.exe"), E::kBadHeader, 30);
  expectAllSplits(UploadKind::kXlsx, xlsxHead("xl/a b"), E::kBadHeader, 34);
  expectAllSplits(UploadKind::kXlsx, xlsxHead("[Content_Types].xml", 99), E::kBadHeader, 8);
  expectAllSplits(UploadKind::kXlsx, xlsxHead("[Content_Types].xml", 8, 7), E::kBadHeader, 6);  // encrypted
  expectAllSplits(UploadKind::kXlsx, xlsxHead("").substr(0, 30), E::kBadHeader, 26);
  expectAllSplits(UploadKind::kXlsx, xlsxHead().substr(0, 40), E::kTooShort, 40);
}

TEST(UploadSniff, XlsMagic) {
  const std::string ole = xlsHead();
  expectAllSplits(UploadKind::kXls, ole + "body", E::kNone, 0);
  std::string bad = ole;
  bad[7] = '\xE0';
  expectAllSplits(UploadKind::kXls, bad, E::kBadMagic, 7);
  expectAllSplits(UploadKind::kXls, std::string("PK\x03\x04", 4), E::kBadMagic, 0);
  expectAllSplits(UploadKind::kXls, ole.substr(0, 7), E::kTooShort, 7);
  expectAllSplits(UploadKind::kXls, ole.substr(0, 8), E::kTooShort, 8);  // the magic alone
  std::string v5 = ole;
  v5[10] = 5;
  expectAllSplits(UploadKind::kXls, v5, E::kBadHeader, 10);
  std::string order = ole;
  order[12] = 0;
  expectAllSplits(UploadKind::kXls, order, E::kBadHeader, 12);
  std::string sector = ole;
  sector[14] = 12;  // 4096-byte sectors are version 4's
  expectAllSplits(UploadKind::kXls, sector, E::kBadHeader, 14);
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
