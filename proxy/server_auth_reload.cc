// Store-only reloads (SPEC §3 auth.watch, encryption.watch): the token store
// or the keyring changed on disk. The new snapshot is the running one with
// just that part re-read; the config file is never read here, so a broken or
// unapplied config edit neither blocks a revocation nor goes live with it.
#include "filters/upload_encrypt.h"
#include "proxy/audit_log.h"
#include "proxy/auth_state.h"
#include "proxy/keyring.h"
#include "proxy/server.h"
#include "proxy/worker.h"

namespace portcullis {

std::shared_ptr<const FilterFactory> Server::makeEncryptFactory(const Config& cfg,
                                                                const std::shared_ptr<const LocalKeyring>& keys) {
  for (const std::string& id : keys->keyIds()) {
    auto& c = enc_counters_[id];
    if (!c) c = std::make_unique<EncryptionCounters>();
  }
  EncryptionCounters* counters = enc_counters_[keys->activeKeyId()].get();
  return std::make_shared<UploadEncryptFactory>(keys, cfg.encryption.segment_bytes, counters);
}

bool Server::reloadAuthFiles(bool store, bool keyring) {
  if (shutting_down_ || !snapshot_) return true;
  const Config& cfg = *config_;
  auto snap = std::make_shared<Snapshot>(*snapshot_);  // same config, routes, TLS
  std::string error;
  bool ok = true;
  if (store && cfg.auth.configured()) {
    snap->auth = buildAuthState(cfg, snapshot_->auth.get(), last_use_seed_, error);
    ok = snap->auth != nullptr;
    if (ok) {
      if (auto r = withInMemoryRevocations(*snap->auth, revoked_here_, /*from_store=*/true)) snap->auth = std::move(r);
    }
  }
  std::shared_ptr<const LocalKeyring> keys;
  if (ok && keyring && cfg.encryption.configured()) {
    keys = LocalKeyring::load(cfg.encryption.keyring, error);
    ok = keys != nullptr;
    if (ok) {
      for (auto& f : snap->filters) {
        if (dynamic_cast<const UploadEncryptFactory*>(f.get()) != nullptr) f = makeEncryptFactory(cfg, keys);
      }
      snap->keys = keys;
    }
  }
  const char* what = store && keyring ? "token store and keyring" : store ? "token store" : "keyring";
  if (!ok) {
    // Retried every second until it loads; said once per distinct error.
    if (error != auth_reload_error_) {
      auth_reload_error_ = error;
      reload_failures_++;
      logLine("error", std::string(what) + " reload refused, keeping the running one: " + error);
      if (audit_) {
        audit_->record("config.reload",
                       AuditFields().str("result", "refused").str("files", what).str("error", error).take());
      }
    }
    return false;
  }
  auth_reload_error_.clear();
  if (store) store_reread_pending_ = false;
  snap->generation = ++generation_;
  snapshot_ = snap;
  for (auto& w : workers_) w->postSnapshot(snap);
  if (audit_ && keys) {
    std::string e;
    if (!audit_->setKeys(snap->keys, e)) logLine("error", "audit log keeps its key: " + e);
  }
  reloads_++;
  logLine("info", std::string(what) + " reloaded on the running config (generation " +
                      std::to_string(snap->generation) + ")" + (keys ? "; active key " + keys->activeKeyId() : ""));
  if (audit_) {
    audit_->record("config.reload", AuditFields()
                                        .str("result", "applied")
                                        .str("files", what)
                                        .unum("generation", snap->generation)
                                        .take());
  }
  return true;
}

}  // namespace portcullis
