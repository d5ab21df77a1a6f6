// The objectd commands of the `cairn` CLI: `tenant ...` and `objects heal`, over objectd's
// admin API (S3AdminClient). Hooked into run_cli() by add_objectd_commands() before parsing
// and run_objectd_commands() after it.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "cli.h"
#include "common/size.h"
#include "s3_admin_client.h"

namespace cairn::client {

struct ObjectdCommands {
  std::string name;
  bool no_wait = false;
  bool status_only = false;
  int poll_ms = 500;
  int plain_every_ms = 5000;

  CLI::App* tenant_create = nullptr;
  CLI::App* tenant_list = nullptr;
  CLI::App* key_create = nullptr;
  CLI::App* heal = nullptr;
};

namespace {

namespace outcome = boost::outcome_v2;

constexpr int kUnreachableGraceS = 60;  // a restarting objectd may be away this long
constexpr int kFollowUpWaitMs = 3000;   // a pass that ends degraded may be followed by another
constexpr int kPassesMax = 10;

ClientError cli_error(std::error_code code, std::string message) {
  return ClientError{code, 0, std::move(message)};
}

}  // namespace

std::string format_duration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) return "?";
  auto s = static_cast<uint64_t>(std::llround(seconds));
  char buf[32];
  if (s < 60)
    snprintf(buf, sizeof(buf), "%llus", static_cast<unsigned long long>(s));
  else if (s < 3600)
    snprintf(buf, sizeof(buf), "%llum%02llus", static_cast<unsigned long long>(s / 60),
             static_cast<unsigned long long>(s % 60));
  else
    snprintf(buf, sizeof(buf), "%lluh%02llum", static_cast<unsigned long long>(s / 3600),
             static_cast<unsigned long long>(s / 60 % 60));
  return buf;
}

std::string format_rate(double bytes_per_second) {
  if (!(bytes_per_second > 0)) return "0 B/s";
  return format_size_bytes(static_cast<uint64_t>(bytes_per_second)) + "/s";
}

ClientResult<sigv4::Credentials> read_s3_credentials_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    int e = errno ? errno : ENOENT;
    return outcome::failure(cli_error(errno_code(e), "cannot read S3 credentials file " + path +
                                                         ": " + std::strerror(e)));
  }
  sigv4::Credentials c;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    size_t eq = line.find('=');
    if (line.empty() || line[0] == '#' || eq == std::string::npos) continue;
    std::string key = line.substr(0, eq), value = line.substr(eq + 1);
    if (key == "access_key_id") c.access_key_id = value;
    if (key == "secret_access_key") c.secret_access_key = value;
  }
  if (c.access_key_id.empty() || c.secret_access_key.empty()) {
    return outcome::failure(cli_error(
        Errc::invalid_argument,
        "S3 credentials file " + path + " lacks access_key_id= or secret_access_key="));
  }
  return c;
}

ClientResult<sigv4::Credentials> resolve_s3_credentials(const std::string& flag_access_key,
                                                        const std::string& flag_secret_key,
                                                        const std::string& flag_file,
                                                        const GetEnv& getenv,
                                                        const std::string& default_file) {
  if (!flag_access_key.empty() || !flag_secret_key.empty()) {
    if (flag_access_key.empty() || flag_secret_key.empty())
      return outcome::failure(
          cli_error(Errc::invalid_argument, "give both --access-key and --secret-key"));
    return sigv4::Credentials{flag_access_key, flag_secret_key};
  }
  if (!flag_file.empty()) return read_s3_credentials_file(flag_file);
  auto ak = getenv("CAIRN_S3_ACCESS_KEY"), sk = getenv("CAIRN_S3_SECRET_KEY");
  if ((ak && !ak->empty()) || (sk && !sk->empty())) {
    if (!ak || ak->empty() || !sk || sk->empty())
      return outcome::failure(cli_error(Errc::invalid_argument,
                                        "set both CAIRN_S3_ACCESS_KEY and CAIRN_S3_SECRET_KEY"));
    return sigv4::Credentials{*ak, *sk};
  }
  if (auto f = getenv("CAIRN_S3_CREDENTIALS"); f && !f->empty())
    return read_s3_credentials_file(*f);
  if (!default_file.empty() && ::access(default_file.c_str(), F_OK) == 0)
    return read_s3_credentials_file(default_file);
  return outcome::failure(cli_error(
      Errc::invalid_argument,
      "no S3 credentials: give --access-key and --secret-key, --s3-credentials FILE, or set "
      "CAIRN_S3_ACCESS_KEY and CAIRN_S3_SECRET_KEY (objectd writes its root key to "
      "DATA_DIR/s3.credentials; default " +
          std::string(kDefaultS3CredentialsFile) + ")"));
}

std::string format_tenant_table(const cairn::v1::ListTenantsResponse& list) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : list.tenants()) rows.push_back({t.name()});
  return format_table({"NAME"}, rows);
}

std::string format_access_key(const cairn::v1::S3AccessKey& key) {
  return format_fields({
             {"tenant", key.tenant()},
             {"access key id", key.access_key_id()},
             {"secret access key", key.secret_key()},
         }) +
         "(the secret is shown only now: store it safely)\n";
}

std::string format_heal_progress(const cairn::v1::HealStatus& s) {
  std::string total = s.objects_total() > 0 || !s.running() ? std::to_string(s.objects_total())
                                                           : std::string("?");
  std::string line = "heal: " + std::to_string(s.objects_scanned()) + "/" + total + " objects";
  if (s.objects_total() > 0) {
    char pct[16];
    snprintf(pct, sizeof(pct), " (%.0f%%)",
             std::min(100.0, 100.0 * static_cast<double>(s.objects_scanned()) /
                                 static_cast<double>(s.objects_total())));
    line += pct;
  }
  line += ", " + std::to_string(s.objects_healed()) + " healed, " +
          std::to_string(s.objects_failed()) + " failed, " + format_rate(s.bytes_per_second());
  if (s.running()) line += ", ETA " + format_duration(s.eta_seconds());
  return line;
}

std::string format_heal_status(const cairn::v1::HealStatus& s) {
  return format_fields({
      {"running", s.running() ? "yes" : "no"},
      {"objects scanned", std::to_string(s.objects_scanned()) + " of " +
                              std::to_string(s.objects_total())},
      {"objects healed", std::to_string(s.objects_healed())},
      {"objects failed", std::to_string(s.objects_failed())},
      {"bytes rewritten", format_size_bytes(s.bytes_rewritten())},
      {"queued by reads", std::to_string(s.queued())},
      {"throughput", format_rate(s.bytes_per_second())},
      {"eta", s.running() ? format_duration(s.eta_seconds()) : "-"},
      {"fully redundant", s.fully_redundant() ? "yes" : "no"},
      {"drives online", std::to_string(s.drives_online())},
  });
}

void add_s3_flags(CLI::App& app, S3Flags& f) {
  app.add_option("--s3-endpoint", f.endpoint,
                 "S3 endpoint: objectd's, or any S3 service's for backups (env CAIRN_S3_ENDPOINT, default " +
                     std::string(kDefaultS3Endpoint) + ")");
  app.add_option("--access-key", f.access_key, "S3 access key id (env CAIRN_S3_ACCESS_KEY)");
  app.add_option("--secret-key", f.secret_key, "S3 secret access key (env CAIRN_S3_SECRET_KEY)");
  app.add_option("--s3-credentials", f.credentials_file,
                 "S3 credentials file (env CAIRN_S3_CREDENTIALS, default " +
                     std::string(kDefaultS3CredentialsFile) + " if present)");
}

ClientResult<S3Access> resolve_s3_access(const S3Flags& f, const GetEnv& getenv) {
  S3Access access;
  access.endpoint = f.endpoint;
  if (access.endpoint.empty()) access.endpoint = getenv("CAIRN_S3_ENDPOINT").value_or(kDefaultS3Endpoint);
  auto creds = resolve_s3_credentials(f.access_key, f.secret_key, f.credentials_file, getenv);
  if (!creds) return outcome::failure(creds.error());
  access.credentials = creds.value();
  return access;
}

std::shared_ptr<ObjectdCommands> add_objectd_commands(CLI::App& app) {
  auto c = std::make_shared<ObjectdCommands>();
  auto* tenant = app.add_subcommand("tenant", "create and list objectd tenants and their keys");
  tenant->require_subcommand(1);
  c->tenant_create = tenant->add_subcommand("create", "create a tenant");
  c->tenant_create->add_option("NAME", c->name, "tenant name (1-64 of a-z 0-9 _ -)")->required();
  c->tenant_list = tenant->add_subcommand("list", "list tenants");
  auto* key = tenant->add_subcommand("key", "S3 access keys of a tenant");
  key->require_subcommand(1);
  c->key_create = key->add_subcommand("create", "create an access key; prints its secret once");
  c->key_create->add_option("NAME", c->name, "tenant name")->required();

  auto* objects = app.add_subcommand("objects", "objectd maintenance");
  objects->require_subcommand(1);
  c->heal = objects->add_subcommand(
      "heal", "run a heal pass and follow it (exit 0 when every object is fully redundant)");
  auto* no_wait = c->heal->add_flag("--no-wait", c->no_wait, "start the pass and return");
  auto* status = c->heal->add_flag("--status", c->status_only, "print the heal status once");
  no_wait->excludes(status);
  c->heal->add_option("--poll-ms", c->poll_ms, "status poll interval")
      ->group("")
      ->check(CLI::Range(10, 60000));
  return c;
}

namespace {

class HealFollower {
 public:
  HealFollower(const ObjectdCommands& c, S3AdminClient& client, bool json, std::ostream& out,
               std::ostream& err)
      : c_(c), client_(client), json_(json), out_(out), err_(err),
        tty_(&out == &std::cout && ::isatty(STDOUT_FILENO) == 1) {}

  int run(const cairn::v1::HealStatus& started) {
    cairn::v1::HealStatus s = started;
    int passes = 1;
    auto unreachable_since = Clock::time_point::max();
    for (;;) {
      if (s.running()) {
        progress(s);
        sleep_ms(c_.poll_ms);
      } else {
        // The pass ended. A degraded end may be followed at once by another pass (a
        // replacement drive was formatted mid-pass): follow that one too.
        if (s.objects_failed() == 0 && !s.fully_redundant() && passes < kPassesMax) {
          auto next = wait_for_follow_up();
          if (next) {
            s = *next;
            ++passes;
            continue;
          }
        }
        return finish(s);
      }
      auto r = client_.heal_status();
      if (!r) {
        if (r.error().http_status != 0) return fail(r.error());
        auto now = Clock::now();
        if (unreachable_since == Clock::time_point::max()) {
          unreachable_since = now;
          note(r.error().message + " (retrying for up to " + std::to_string(kUnreachableGraceS) +
               " s)");
        }
        if (now - unreachable_since > std::chrono::seconds(kUnreachableGraceS))
          return fail(r.error());
        continue;  // s still says running: sleep and poll again
      }
      if (unreachable_since != Clock::time_point::max()) {
        unreachable_since = Clock::time_point::max();
        note("objectd is back");
      }
      s = r.value();
    }
  }

 private:
  using Clock = std::chrono::steady_clock;

  std::optional<cairn::v1::HealStatus> wait_for_follow_up() {
    for (int waited = 0; waited < kFollowUpWaitMs; waited += c_.poll_ms) {
      sleep_ms(c_.poll_ms);
      auto r = client_.heal_status();
      if (!r) return std::nullopt;
      if (r.value().running() || r.value().fully_redundant()) return r.value();
    }
    return std::nullopt;
  }

  void progress(const cairn::v1::HealStatus& s) {
    if (json_) return;
    std::string line = format_heal_progress(s);
    if (tty_) {
      out_ << "\r\033[K" << line << std::flush;
      drawn_ = true;
      return;
    }
    auto now = Clock::now();
    if (last_plain_ == Clock::time_point() ||
        now - last_plain_ >= std::chrono::milliseconds(c_.plain_every_ms)) {
      out_ << line << "\n" << std::flush;
      last_plain_ = now;
    }
  }

  void note(const std::string& text) {
    if (drawn_) out_ << "\n";
    drawn_ = false;
    err_ << "cairn: " << text << "\n";
  }

  int finish(const cairn::v1::HealStatus& s) {
    if (json_) {
      out_ << format_json(s);
    } else {
      if (tty_ && drawn_) out_ << "\r\033[K";
      out_ << "heal finished: " << s.objects_scanned() << " objects scanned, "
           << s.objects_healed() << " healed, " << s.objects_failed() << " failed, "
           << format_size_bytes(s.bytes_rewritten()) << " rewritten; "
           << (s.fully_redundant() ? "fully redundant" : "NOT fully redundant") << " ("
           << s.drives_online() << " drives online)\n"
           << std::flush;
    }
    if (s.objects_failed() > 0) {
      err_ << "cairn: error: " << s.objects_failed()
           << " object(s) could not be healed (fewer than k good shards)\n";
      return 1;
    }
    if (!s.fully_redundant()) {
      err_ << "cairn: error: the heal pass finished but the store is not fully redundant ("
           << s.drives_online()
           << " drives online): check objectd's log for offline drives\n";
      return 1;
    }
    return 0;
  }

  int fail(const ClientError& e) {
    if (drawn_) out_ << "\n";
    err_ << "cairn: error: " << e.message << "\n";
    return 1;
  }

  static void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

  const ObjectdCommands& c_;
  S3AdminClient& client_;
  bool json_;
  std::ostream& out_;
  std::ostream& err_;
  bool tty_;
  bool drawn_ = false;
  Clock::time_point last_plain_{};
};

}  // namespace

std::optional<int> run_objectd_commands(const ObjectdCommands& c, const S3Flags& s3, bool json,
                                        std::ostream& out, std::ostream& err, const GetEnv& getenv) {
  if (!*c.tenant_create && !*c.tenant_list && !*c.key_create && !*c.heal) return std::nullopt;
  if (s3_keys_half_given(s3)) {
    err << "cairn: error: give both --access-key and --secret-key (see --help)\n";
    return 2;
  }
  auto access = resolve_s3_access(s3, getenv);
  if (!access) {
    err << "cairn: error: " << access.error().message << "\n";
    return 1;
  }
  S3AdminClient client(access.value().endpoint, access.value().credentials);
  auto fail = [&](const ClientError& e) {
    err << "cairn: error: " << e.message;
    if (e.http_status == 403)
      err << " (the admin API needs objectd's root key, from DATA_DIR/s3.credentials)";
    err << "\n";
    return 1;
  };

  if (*c.tenant_create) {
    auto r = client.create_tenant(c.name);
    if (!r) return fail(r.error());
    out << (json ? format_json(r.value()) : "created tenant " + r.value().name() + "\n");
    return 0;
  }
  if (*c.tenant_list) {
    auto r = client.list_tenants();
    if (!r) return fail(r.error());
    if (json)
      out << format_json(r.value());
    else if (r.value().tenants().empty())
      out << "no tenants\n";
    else
      out << format_tenant_table(r.value());
    return 0;
  }
  if (*c.key_create) {
    auto r = client.create_access_key(c.name);
    if (!r) return fail(r.error());
    out << (json ? format_json(r.value()) : format_access_key(r.value()));
    return 0;
  }
  // objects heal
  if (c.status_only) {
    auto r = client.heal_status();
    if (!r) return fail(r.error());
    out << (json ? format_json(r.value()) : format_heal_status(r.value()));
    return 0;
  }
  auto started = client.start_heal();
  if (!started) return fail(started.error());
  if (c.no_wait) {
    if (json)
      out << format_json(started.value());
    else
      out << "heal pass started; follow it with `cairn objects heal --status`\n";
    return 0;
  }
  return HealFollower(c, client, json, out, err).run(started.value());
}

}  // namespace cairn::client
