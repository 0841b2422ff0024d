// Checks that one audit record continues another (proxy/audit_log.h), for
// unit and e2e tests of what the audit log writes.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <string_view>

#include "proxy/audit_verify.h"
#include "proxy/keyring.h"

namespace portcullis::testing_audit {

// Expects `line` to parse as a record whose seq follows `prev_line`'s, whose
// prev is `prev_line`'s mac as written (edited or not), and whose own mac
// verifies under its key_id in `keys`.
inline void expectChainedAfter(const KeyProvider& keys, const std::string& line, const std::string& prev_line) {
  AuditLine rec, before;
  ASSERT_TRUE(parseAuditLine(line, rec)) << line;
  ASSERT_TRUE(parseAuditLine(prev_line, before)) << prev_line;
  EXPECT_EQ(rec.seq, before.seq + 1) << line;
  EXPECT_EQ(rec.prev, before.mac) << line;
  std::unique_ptr<AuditMac> mac = AuditMac::create(keys, rec.key_id);
  ASSERT_TRUE(mac) << "no key " << rec.key_id;
  std::string hex;
  mac->appendMacHex(rec.prev, std::string_view(line).substr(0, rec.mac_cut), hex);
  EXPECT_EQ(hex, rec.mac) << line;
}

}  // namespace portcullis::testing_audit
