#!/usr/bin/env python3
"""Independent reference implementation of the pcx1 format (SPEC §7).

Written from the specification only, with python3-cryptography's AESGCM, to
check the C++ implementation byte for byte.

  pcx1_reference.py check VECTORS        re-encrypt every vector with its
                                         recorded randomness, compare byte for
                                         byte, decrypt it, and check that
                                         tampered copies are rejected
  pcx1_reference.py generate > VECTORS   write the vectors from scratch
  pcx1_reference.py decrypt --key ID=HEX [--key ...] < in > out
                                         exit 1 and a one-line reason on stderr
                                         when the input is rejected
"""
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"PCX1"
TAG = 16


class Reject(Exception):
    pass


def header_bytes(key_id, segment_size, wrap_nonce, wrapped_dek, nonce_prefix):
    kid = key_id.encode("ascii")
    length = 4 + 2 + 4 + 1 + len(kid) + 12 + 48 + 7
    return (MAGIC + struct.pack(">HIB", length, segment_size, len(kid)) + kid + wrap_nonce + wrapped_dek +
            nonce_prefix)


def nonce(prefix, index, last):
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def encrypt(master, key_id, segment_size, dek, wrap_nonce, nonce_prefix, plaintext):
    wrapped = AESGCM(master).encrypt(wrap_nonce, dek, b"pcx1-dek" + key_id.encode("ascii"))
    header = header_bytes(key_id, segment_size, wrap_nonce, wrapped, nonce_prefix)
    aead = AESGCM(dek)
    out = [header]
    chunks = [plaintext[i:i + segment_size] for i in range(0, len(plaintext), segment_size)] or [b""]
    for i, chunk in enumerate(chunks):
        out.append(aead.encrypt(nonce(nonce_prefix, i, i == len(chunks) - 1), chunk, header))
    return b"".join(out)


def decrypt(keys, data):
    if len(data) < 6 or data[:4] != MAGIC:
        raise Reject("bad header: bad magic or truncated")
    (hlen,) = struct.unpack(">H", data[4:6])
    if hlen < 79 or len(data) < hlen:
        raise Reject("bad header: header_len out of range or truncated")
    segment_size, kid_len = struct.unpack(">IB", data[6:11])
    if hlen != 78 + kid_len or segment_size == 0:
        raise Reject("bad header: inconsistent lengths")
    key_id = data[11:11 + kid_len].decode("ascii", "replace")
    p = 11 + kid_len
    wrap_nonce, wrapped, prefix = data[p:p + 12], data[p + 12:p + 60], data[p + 60:p + 67]
    header = data[:hlen]
    if key_id not in keys:
        raise Reject("unknown key id %r" % key_id)
    try:
        dek = AESGCM(keys[key_id]).decrypt(wrap_nonce, wrapped, b"pcx1-dek" + key_id.encode("ascii"))
    except Exception:
        raise Reject("data key does not unwrap")
    aead = AESGCM(dek)
    body = data[hlen:]
    full = segment_size + TAG
    out = []
    index = 0
    pos = 0
    while True:
        if index >= 0xFFFFFFFF:
            raise Reject("segment index reaches 2^32 - 1")
        rest = len(body) - pos
        if rest > full:
            if index >= 0xFFFFFFFE:
                raise Reject("segment index reaches 2^32 - 1")
            try:
                out.append(aead.decrypt(nonce(prefix, index, False), body[pos:pos + full], header))
            except Exception:
                raise Reject("segment %d failed authentication" % index)
            pos += full
            index += 1
            continue
        if rest < TAG:
            raise Reject("truncated: end of data without a final segment")
        try:
            last = aead.decrypt(nonce(prefix, index, True), body[pos:], header)
        except Exception:
            raise Reject("segment %d failed authentication (or not final)" % index)
        if not last and index > 0:
            raise Reject("empty final segment after other segments")
        out.append(last)
        return b"".join(out)


def plaintext_for(n):
    return bytes((i * 31 + 7) & 0xFF for i in range(n))


# The published vectors: (name, key_id, segment_size, plaintext length).
VECTORS = [
    ("empty", "k1", 16, 0),
    ("one_byte", "k1", 16, 1),
    ("segment_minus_1", "k1", 16, 15),
    ("segment", "k1", 16, 16),
    ("segment_plus_1", "k1", 16, 17),
    ("three_segments", "k1", 16, 40),
    ("three_full_segments", "k1", 16, 48),
    ("seg64_rotated_key", "k2026-12", 64, 200),
]
MASTER = {"k1": bytes(range(0x00, 0x20)), "k2026-12": bytes(range(0xA0, 0xC0))}
DEK = bytes(range(0x20, 0x40))
WRAP_NONCE = bytes(range(0x40, 0x4C))
NONCE_PREFIX = bytes(range(0x50, 0x57))


def generate(out):
    out.write("# pcx1 test vectors (SPEC §7), produced by the deterministic test mode of\n"
              "# tools/pcx1 (tests/unit/pcx1_test.cc) and by tests/pcx1_reference.py.\n"
              "# plaintext byte i = (i * 31 + 7) mod 256. All values hex except name,\n"
              "# key_id and segment_size. Blocks are separated by blank lines.\n")
    for name, kid, seg, n in VECTORS:
        pt = plaintext_for(n)
        ct = encrypt(MASTER[kid], kid, seg, DEK, WRAP_NONCE, NONCE_PREFIX, pt)
        out.write("\nname = %s\nmaster_key = %s\nkey_id = %s\ndek = %s\nwrap_nonce = %s\nnonce_prefix = %s\n"
                  "segment_size = %d\nplaintext = %s\nciphertext = %s\n" %
                  (name, MASTER[kid].hex(), kid, DEK.hex(), WRAP_NONCE.hex(), NONCE_PREFIX.hex(), seg, pt.hex(),
                   ct.hex()))


def parse_vectors(path):
    vectors, cur = [], {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line.startswith("#"):
            continue
        if not line:
            if cur:
                vectors.append(cur)
            cur = {}
            continue
        k, _, v = line.partition("=")
        cur[k.strip()] = v.strip()
    if cur:
        vectors.append(cur)
    return vectors


def check(path):
    vectors = parse_vectors(path)
    if not vectors:
        print("no vectors in %s" % path, file=sys.stderr)
        return 1
    failures = 0
    for v in vectors:
        master, kid, seg = bytes.fromhex(v["master_key"]), v["key_id"], int(v["segment_size"])
        pt, ct = bytes.fromhex(v["plaintext"]), bytes.fromhex(v["ciphertext"])
        mine = encrypt(master, kid, seg, bytes.fromhex(v["dek"]), bytes.fromhex(v["wrap_nonce"]),
                       bytes.fromhex(v["nonce_prefix"]), pt)
        problems = []
        if mine != ct:
            problems.append("re-encryption differs")
        n = len(pt)
        if len(ct) != 78 + len(kid) + n + 16 * max(1, -(-n // seg)):
            problems.append("ciphertext length is not the SPEC formula")
        try:
            if decrypt({kid: master}, ct) != pt:
                problems.append("decrypts to the wrong plaintext")
        except Reject as e:
            problems.append("rejected: %s" % e)
        bad = [ct + b"\0", ct[:-1], ct[:len(ct) - 17] if len(ct) > 95 else ct[:10]]
        for i in range(0, len(ct), 7):
            bad.append(ct[:i] + bytes([ct[i] ^ 1]) + ct[i + 1:])
        for b in bad:
            try:
                decrypt({kid: master}, b)
                problems.append("accepted a tampered copy")
                break
            except Reject:
                pass
        try:
            decrypt({kid: bytes(32)}, ct)
            problems.append("accepted a wrong master key")
        except Reject:
            pass
        status = "ok" if not problems else "FAIL: " + "; ".join(problems)
        print("%-22s %s" % (v["name"], status))
        failures += bool(problems)
    return 1 if failures else 0


def main(argv):
    if len(argv) >= 2 and argv[1] == "check" and len(argv) == 3:
        return check(argv[2])
    if len(argv) == 2 and argv[1] == "generate":
        generate(sys.stdout)
        return 0
    if len(argv) >= 2 and argv[1] == "decrypt":
        keys = {}
        args = argv[2:]
        while args:
            if args[0] == "--key" and len(args) > 1 and "=" in args[1]:
                kid, _, hexkey = args[1].partition("=")
                keys[kid] = bytes.fromhex(hexkey)
                args = args[2:]
            else:
                print(__doc__, file=sys.stderr)
                return 2
        try:
            plain = decrypt(keys, sys.stdin.buffer.read())
        except Reject as e:
            print("pcx1_reference decrypt: rejected: %s" % e, file=sys.stderr)
            return 1
        sys.stdout.buffer.write(plain)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
