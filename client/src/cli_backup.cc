// `cairn backup ...`: backups of snapshots into an S3 repository, run by blockd.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <thread>

#include "cli.h"
#include "common/file.h"
#include "common/size.h"

namespace cairn::client {

struct BackupCommands {
  std::string repo;
  std::string key_file;
  std::string source;  // VOL@SNAP
  std::string backup;  // VOLUME/ID or ID
  std::string volume;
  std::string chunk_size;
  uint32_t keep_last = 0, keep_daily = 0, keep_weekly = 0, keep_monthly = 0;
  bool dry_run = false;
  bool detach = false;
  bool instant = false;
  int poll_ms = 500;

  CLI::App* init = nullptr;
  CLI::App* create = nullptr;
  CLI::App* list = nullptr;
  CLI::App* verify = nullptr;
  CLI::App* restore = nullptr;
  CLI::App* prune = nullptr;
  CLI::App* del = nullptr;
  CLI::App* jobs = nullptr;
};

std::shared_ptr<BackupCommands> add_backup_commands(CLI::App& app) {
  auto c = std::make_shared<BackupCommands>();
  auto* backup = app.add_subcommand("backup", "back up snapshots into an S3 repository, restore, verify, prune");
  backup->require_subcommand(1);
  auto repo = [&](CLI::App* cmd) {
    cmd->add_option("--repo", c->repo, "repository s3://BUCKET[/PREFIX] (env CAIRN_BACKUP_REPO)");
    cmd->add_option("--key-file", c->key_file,
                    "key of an encrypted repository: 64 hex chars (env CAIRN_BACKUP_KEY_FILE)");
  };
  c->init = backup->add_subcommand("init", "create a repository (encrypted when --key-file is given)");
  repo(c->init);
  c->init->add_option("--chunk-size", c->chunk_size, "chunk size, a power of two from 64K to 64M (default 4M)");

  c->create = backup->add_subcommand("create", "back up a snapshot (incremental to the volume's last backup)");
  c->create->add_option("SOURCE", c->source, "VOLUME@SNAPSHOT")->required();
  repo(c->create);
  c->create->add_flag("--detach", c->detach, "start the job and print its id");

  c->list = backup->add_subcommand("list", "list backups, oldest first");
  c->list->add_option("VOLUME", c->volume, "only this volume's backups");
  repo(c->list);

  c->verify = backup->add_subcommand("verify", "re-read and check every chunk (exit 1 when any backup is damaged)");
  c->verify->add_option("BACKUP", c->backup, "VOLUME/ID or ID (default: every backup)");
  repo(c->verify);
  c->verify->add_flag("--detach", c->detach, "start the job and print its id");

  c->restore = backup->add_subcommand("restore", "write a backup into a new volume");
  c->restore->add_option("BACKUP", c->backup, "VOLUME/ID or ID")->required();
  c->restore->add_option("NEWVOL", c->volume, "the volume to create")->required();
  repo(c->restore);
  c->restore->add_flag("--instant", c->instant, "usable at once; hydrate in the background");
  c->restore->add_flag("--detach", c->detach, "start the job and print its id");

  c->prune = backup->add_subcommand("prune", "apply retention rules, then collect unreferenced chunks");
  c->prune->add_option("VOLUME", c->volume, "only this volume's backups (rules apply per volume)");
  repo(c->prune);
  c->prune->add_option("--keep-last", c->keep_last, "keep the newest N");
  c->prune->add_option("--keep-daily", c->keep_daily, "keep the newest of each of the last N days");
  c->prune->add_option("--keep-weekly", c->keep_weekly, "keep the newest of each of the last N weeks");
  c->prune->add_option("--keep-monthly", c->keep_monthly, "keep the newest of each of the last N months");
  c->prune->add_flag("--dry-run", c->dry_run, "show what would go");

  c->del = backup->add_subcommand("delete", "delete one backup and the chunks only it held");
  c->del->add_option("BACKUP", c->backup, "VOLUME/ID or ID")->required();
  repo(c->del);
  c->del->add_flag("--dry-run", c->dry_run, "show what would go");

  c->jobs = backup->add_subcommand("jobs", "list blockd's backup, restore and verify jobs");
  for (auto* cmd : {c->create, c->verify, c->restore}) {
    cmd->add_option("--poll-ms", c->poll_ms, "job poll interval")->group("")->check(CLI::Range(10, 60000));
  }
  return c;
}

namespace {

std::string utc_time(int64_t unix_s) {
  std::time_t t = static_cast<std::time_t>(unix_s);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

std::string percent(uint64_t done, uint64_t total) {
  if (total == 0) return "";
  char buf[16];
  std::snprintf(buf, sizeof buf, " (%.0f%%)", 100.0 * static_cast<double>(done) / static_cast<double>(total));
  return buf;
}

std::string format_job_line(const cairn::v1::BackupJob& j) {
  std::string what = j.kind() + " " + (j.kind() == "backup" ? j.volume() + "@" + j.snapshot()
                                      : j.kind() == "restore" || j.kind() == "hydrate" ? j.backup_id() + " -> " + j.volume()
                                                              : (j.backup_id().empty() ? "all" : j.backup_id()));
  std::string line = what + ": " + format_size_bytes(j.done_bytes()) + " of " + format_size_bytes(j.total_bytes()) +
                     percent(j.done_bytes(), j.total_bytes()) + ", " + format_rate(j.rate_bytes_per_s());
  if (j.kind() == "backup") line += ", uploaded " + format_size_bytes(j.uploaded_bytes());
  if (j.state() == "running") line += ", ETA " + format_duration(j.eta_s());
  return line;
}

std::string format_jobs_table(const cairn::v1::ListBackupJobsResponse& list) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& j : list.jobs()) {
    std::string target = j.kind() == "backup" ? j.volume() + "@" + j.snapshot()
                         : j.kind() == "restore" || j.kind() == "hydrate" ? j.volume() : j.backup_id();
    rows.push_back({j.id(), j.kind(), j.state(), target,
                    format_size_bytes(j.done_bytes()) + "/" + format_size_bytes(j.total_bytes()),
                    format_duration(j.elapsed_s()), j.error()});
  }
  return format_table({"JOB", "KIND", "STATE", "TARGET", "PROGRESS", "ELAPSED", "ERROR"}, rows);
}

std::string format_backup_table(const cairn::v1::ListBackupsResponse& list) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& b : list.backups()) {
    rows.push_back({b.volume() + "/" + b.backup_id(), utc_time(b.created_unix_s()), b.snapshot(),
                    format_size_bytes(b.volume_size()), format_size_bytes(b.stats().logical_bytes()),
                    format_size_bytes(b.stats().new_bytes()), b.parent_id().empty() ? "full" : "incremental"});
  }
  std::string out = format_table({"BACKUP", "CREATED", "SNAPSHOT", "SIZE", "DATA", "NEW", "KIND"}, rows);
  out += "repository: " + std::to_string(list.backups_size()) + " backups, " + std::to_string(list.repo_chunks()) +
         " chunks, " + format_size_bytes(list.repo_unique_bytes()) + " stored\n";
  return out;
}

std::string format_verify(const cairn::v1::VerifyResponse& v) {
  std::string out = "checked " + std::to_string(v.backups_checked()) + " backups, " +
                    std::to_string(v.chunks_checked()) + " chunks, " + format_size_bytes(v.bytes_checked()) + "\n";
  if (v.damaged_size() == 0) return out + "all backups intact\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : v.damaged()) {
    rows.push_back({d.volume() + "/" + d.backup_id(), std::to_string(d.missing_chunks()),
                    std::to_string(d.corrupt_chunks())});
  }
  out += "DAMAGED backups (restoring them fails):\n" + format_table({"BACKUP", "MISSING", "CORRUPT"}, rows);
  for (const auto& c : v.bad_chunks()) out += "  chunk " + c + "\n";
  return out;
}

std::string format_prune(const cairn::v1::PruneResponse& p, bool dry_run) {
  std::string out;
  for (const auto& r : p.removed()) out += (dry_run ? "would remove " : "removed ") + r + "\n";
  for (const auto& d : p.deferred()) out += "kept for now " + d + " (a running backup builds on it)\n";
  out += std::to_string(p.kept_size()) + " kept; " + std::to_string(p.chunks_deleted()) + " chunks (" +
         format_size_bytes(p.bytes_freed()) + ") " + (dry_run ? "would be freed" : "freed") + "\n";
  return out;
}

// Follows a job until it ends; prints progress to `err` (a line that redraws itself on a
// terminal, a line every 5 s otherwise). Returns the final job, or the error of a poll.
ClientResult<cairn::v1::BackupJob> follow(ControlClient& client, const cairn::v1::BackupJob& started, int poll_ms,
                                          bool quiet, std::ostream& err) {
  bool tty = &err == &std::cerr && ::isatty(STDERR_FILENO) == 1;
  auto last_plain = std::chrono::steady_clock::now();
  cairn::v1::BackupJob j = started;
  while (j.state() == "running") {
    std::this_thread::sleep_for(std::chrono::milliseconds(poll_ms));
    auto r = client.backup_job(j.id());
    if (!r) return r;
    j = r.value();
    if (quiet) continue;
    if (tty) {
      err << "\r\033[K" << format_job_line(j) << std::flush;
    } else if (std::chrono::steady_clock::now() - last_plain > std::chrono::seconds(5)) {
      err << format_job_line(j) << "\n";
      last_plain = std::chrono::steady_clock::now();
    }
  }
  if (tty && !quiet) err << "\r\033[K";
  return j;
}

}  // namespace

std::optional<int> run_backup_commands(const BackupCommands& c, ControlClient& client, const S3Flags& s3,
                                       bool json, std::ostream& out, std::ostream& err,
                                       const GetEnv& getenv) {
  if (!*c.init && !*c.create && !*c.list && !*c.verify && !*c.restore && !*c.prune && !*c.del && !*c.jobs) {
    return std::nullopt;
  }
  auto usage = [&](const std::string& m) {
    err << "cairn: error: " << m << " (see --help)\n";
    return 2;
  };
  auto fail = [&](const std::string& m) {
    err << "cairn: error: " << m << "\n";
    return 1;
  };
  if (*c.jobs) {
    auto r = client.backup_jobs();
    if (!r) return fail(r.error().message);
    out << (json ? format_json(r.value()) : r.value().jobs().empty() ? "no backup jobs\n" : format_jobs_table(r.value()));
    return 0;
  }

  // The repository target.
  cairn::v1::S3Target target;
  target.set_repo(c.repo.empty() ? getenv("CAIRN_BACKUP_REPO").value_or("") : c.repo);
  if (target.repo().empty()) return usage("give the repository with --repo s3://BUCKET[/PREFIX] or CAIRN_BACKUP_REPO");
  if (s3_keys_half_given(s3)) return usage("give both --access-key and --secret-key");
  auto access = resolve_s3_access(s3, getenv);
  if (!access) return fail(access.error().message);
  target.set_endpoint(access.value().endpoint);
  target.set_access_key(access.value().credentials.access_key_id);
  target.set_secret_key(access.value().credentials.secret_access_key);
  std::string key_file = c.key_file.empty() ? getenv("CAIRN_BACKUP_KEY_FILE").value_or("") : c.key_file;
  bool created_key = false;
  if (!key_file.empty()) {
    auto text = read_file(key_file);
    if (!text && text.error() == std::errc::no_such_file_or_directory && *c.init) {
      // A new encrypted repository with a new key: write it (0600) before anything else.
      sigv4::Digest key;
      std::ifstream rnd("/dev/urandom", std::ios::binary);
      if (!rnd.read(reinterpret_cast<char*>(key.data()), key.size())) return fail("cannot read /dev/urandom");
      std::string hex = sigv4::to_hex(key);
      if (!write_file_atomic(key_file, hex + "\n", 0600)) return fail("cannot write key file " + key_file);
      created_key = true;
      target.set_key_hex(hex);
    } else if (!text) {
      return fail("cannot read key file " + key_file + ": " + text.error().message());
    } else {
      std::string& k = text.value();
      while (!k.empty() && std::isspace(static_cast<unsigned char>(k.back()))) k.pop_back();
      target.set_key_hex(k);
    }
  }

  auto show_job = [&](const ClientResult<cairn::v1::BackupJob>& started, bool quiet_progress) -> int {
    if (!started) return fail(started.error().message);
    if (c.detach) {
      out << (json ? format_json(started.value()) : "started " + started.value().id() + "\n");
      return 0;
    }
    if (started.value().kind() == "hydrate" && !json) {
      err << "volume " << started.value().volume() << " is usable now; hydrating it in the background ("
          << started.value().id() << ")\n";
    }
    auto done = follow(client, started.value(), c.poll_ms, json || quiet_progress, err);
    if (!done) return fail(done.error().message);
    const auto& j = done.value();
    if (json) {
      out << format_json(j);
    } else if (j.kind() == "verify" && j.has_verify()) {
      out << format_verify(j.verify());
    } else if (j.state() == "done") {
      out << format_job_line(j) << ", " << format_duration(j.elapsed_s()) << "\n";
      if (j.kind() == "backup") {
        const auto& m = j.result();
        out << "backup " << m.volume() << "/" << m.backup_id() << " ("
            << (m.parent_id().empty() ? "full" : "incremental") << "): read "
            << format_size_bytes(m.stats().read_bytes()) << ", stored " << format_size_bytes(m.stats().new_bytes())
            << " new in " << m.stats().new_chunks() << " chunks, " << m.stats().reused_chunks() << " reused\n";
      }
    }
    if (j.state() != "done") {
      if (!json) err << "cairn: error: " << j.kind() << " failed: " << j.error() << "\n";
      return 1;
    }
    return 0;
  };

  if (*c.init) {
    cairn::v1::InitRepoRequest req;
    *req.mutable_target() = target;
    req.set_encrypt(!target.key_hex().empty());
    if (!c.chunk_size.empty()) {
      auto cs = parse_size_bytes(c.chunk_size);
      if (!cs) return usage("bad --chunk-size '" + c.chunk_size + "'");
      req.set_chunk_size(*cs);
    }
    auto r = client.init_backup_repo(req);
    if (!r) {
      if (created_key) ::unlink(key_file.c_str());
      return fail(r.error().message);
    }
    if (json) {
      out << format_json(r.value());
    } else {
      out << "initialized backup repository " << target.repo() << " (chunks of "
          << format_size_bytes(r.value().chunk_size()) << ", " << r.value().compression() << ", "
          << (r.value().encryption() == "none" ? "not encrypted" : "encrypted with AES-256-GCM") << ")\n";
      if (created_key) out << "wrote a new key to " << key_file << ": keep a copy; without it the backups are lost\n";
    }
    return 0;
  }
  if (*c.create) {
    auto ref = split_snapshot_ref(c.source);
    if (!ref) return usage("give the source as VOLUME@SNAPSHOT, not \"" + c.source + "\"");
    cairn::v1::CreateBackupRequest req;
    *req.mutable_target() = target;
    req.set_volume(ref->first);
    req.set_snapshot(ref->second);
    return show_job(client.create_backup(req), false);
  }
  if (*c.restore) {
    cairn::v1::RestoreBackupRequest req;
    *req.mutable_target() = target;
    req.set_backup_id(c.backup);
    req.set_volume(c.volume);
    req.set_instant(c.instant);
    return show_job(client.restore_backup(req), false);
  }
  if (*c.verify) {
    cairn::v1::VerifyRequest req;
    *req.mutable_target() = target;
    req.set_backup_id(c.backup);
    return show_job(client.verify_backups(req), false);
  }
  if (*c.list) {
    cairn::v1::ListBackupsRequest req;
    *req.mutable_target() = target;
    req.set_volume(c.volume);
    auto r = client.list_backups(req);
    if (!r) return fail(r.error().message);
    out << (json ? format_json(r.value()) : r.value().backups().empty() ? "no backups\n" : format_backup_table(r.value()));
    return 0;
  }
  // prune / delete
  cairn::v1::PruneRequest req;
  *req.mutable_target() = target;
  req.set_dry_run(c.dry_run);
  if (*c.del) {
    req.add_delete_ids(c.backup);
  } else {
    if (!c.keep_last && !c.keep_daily && !c.keep_weekly && !c.keep_monthly) {
      return usage("give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly");
    }
    req.set_volume(c.volume);
    req.set_keep_last(c.keep_last);
    req.set_keep_daily(c.keep_daily);
    req.set_keep_weekly(c.keep_weekly);
    req.set_keep_monthly(c.keep_monthly);
  }
  auto r = client.prune_backups(req);
  if (!r) return fail(r.error().message);
  out << (json ? format_json(r.value()) : format_prune(r.value(), c.dry_run));
  return 0;
}

}  // namespace cairn::client
