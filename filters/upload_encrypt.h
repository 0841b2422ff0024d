// Upload encryption (SPEC §3 `encrypt_body`, [encryption]; §7 format pcx1).
//
// On a route with encrypt_body = true, a request that has a body (chunked, or
// a Content-Length, including 0) gets a fresh random data key wrapped under
// the keyring's active master key, and its body reaches the backend only as
// pcx1 ciphertext: the header, then AES-256-GCM segments. The filter is the
// request's BodyTransform (filter.h), so the upstream gets Content-Length =
// pcx1::ciphertextLength(n) for a Content-Length body and stays chunked for a
// chunked one, plus `X-Portcullis-Encryption: pcx1; key="<id>"`. The original
// Content-Type is kept. Filters before this one (validation) see plaintext.
//
// A Content-Length body, whose length fixes every segment's final flag up
// front, is encrypted where the connection read it (pcx1::SizedSealer via
// transformInPlace): each slice leaves as ciphertext, followed by the tag of
// a segment it completes, with no buffer or copy of its own - the same
// memory and the same writes as plain forwarding. A chunked body is sealed
// in one segment buffer (pcx1::Sealer; segment_bytes + 16) per in-flight
// upload, held only while it holds plaintext or a sealed segment not yet
// written and recycled through a per-worker-thread LIFO pool; a full segment
// waits for its next byte, which says whether it was the last. Either way
// memory is independent of the body size. The data key is wiped when the
// key schedule is set up, the schedule when the stream ends or the request
// is destroyed. A Content-Length body that would need more than 2^32 - 1
// segments is refused with 413 before anything reaches the backend.
//
// A body that never ends (the client went away) is never finished: the last
// segment with the final flag is not sent, so the backend holds an
// unterminated request that no decryptor accepts as complete.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "filters/filter.h"

namespace portcullis {

class KeyProvider;

// Process-wide counters for one master key id (/metrics), owned by the
// server and outliving every snapshot. Updated once per upload.
struct EncryptionCounters {
  std::atomic<uint64_t> uploads{0};   // bodies encrypted completely
  std::atomic<uint64_t> bytes{0};     // plaintext bytes of those bodies
  std::atomic<uint64_t> aborted{0};   // bodies started but never finished
};

class UploadEncryptFactory : public FilterFactory {
 public:
  // `keys` must hold its activeKeyId(); `counters` is that key's entry.
  UploadEncryptFactory(std::shared_ptr<const KeyProvider> keys, uint32_t segment_bytes,
                       EncryptionCounters* counters);
  std::string_view name() const override { return "upload_encrypt"; }
  Filter* create(RequestContext& ctx) const override;

  const KeyProvider& keys() const { return *keys_; }
  const std::string& keyId() const { return key_id_; }
  uint32_t segmentBytes() const { return segment_bytes_; }
  std::string_view headerValue() const { return header_value_; }
  EncryptionCounters* counters() const { return counters_; }

 private:
  std::shared_ptr<const KeyProvider> keys_;
  std::string key_id_;
  uint32_t segment_bytes_;
  std::string header_value_;  // pcx1; key="<id>"
  EncryptionCounters* counters_;
};

}  // namespace portcullis
