// Starts of real spreadsheet files, as the upload sniffer checks them
// (filters/upload_sniff.h), for unit and e2e tests.
#pragma once

#include <cstdint>
#include <string>

namespace portcullis::testing_samples {

// The start of an xlsx: a ZIP local file header naming an OOXML member.
inline std::string xlsxHead(const std::string& name = "[Content_Types].xml", uint16_t method = 8, uint16_t flags = 6) {
  std::string h("PK\x03\x04\x14\x00", 6);
  h += static_cast<char>(flags & 0xFF);
  h += static_cast<char>(flags >> 8);
  h += static_cast<char>(method & 0xFF);
  h += static_cast<char>(method >> 8);
  h += std::string(16, '\0');  // time, date, crc, sizes
  h += static_cast<char>(name.size() & 0xFF);
  h += static_cast<char>(name.size() >> 8);
  h += std::string(2, '\0');  // extra length
  return h + name;
}

// The start of an xls: an OLE2 header (version 3, 512-byte sectors).
inline std::string xlsHead() {
  return std::string("\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1\x3E\x00\x03\x00\xFE\xFF\x09\x00\x06\x00", 18);
}

}  // namespace portcullis::testing_samples
