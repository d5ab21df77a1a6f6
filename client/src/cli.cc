#include "cli.h"

#include <google/protobuf/util/json_util.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <sstream>

#include "common/size.h"

namespace cairn::client {
namespace {

namespace outcome = boost::outcome_v2;

ClientError cli_error(std::error_code code, std::string message) {
  return ClientError{code, 0, std::move(message)};
}

ClientResult<std::string> read_token_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return outcome::failure(
        cli_error(errno_code(errno ? errno : ENOENT),
                  "cannot read token file " + path + ": " + std::strerror(errno ? errno : ENOENT)));
  }
  std::string token;
  in >> token;  // the file holds one hex token, maybe followed by a newline
  if (token.empty()) {
    return outcome::failure(cli_error(Errc::invalid_argument, "token file " + path + " is empty"));
  }
  return token;
}

std::string bytes_with_exact(uint64_t bytes) {
  std::string human = format_size_bytes(bytes);
  if (bytes < 1024) return human;
  return human + " (" + std::to_string(bytes) + " bytes)";
}

std::string format_unix_time(int64_t t) {
  if (t <= 0) return "-";
  time_t tt = static_cast<time_t>(t);
  tm utc{};
  gmtime_r(&tt, &utc);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }

const CLI::Validator kSizeValidator(
    [](std::string& text) -> std::string {
      if (parse_size_bytes(text)) return {};
      return "invalid size \"" + text + "\" (examples: 10G, 512MiB, 4096)";
    },
    "SIZE", "size");

}  // namespace

ClientResult<std::string> resolve_token(const std::string& flag_token,
                                        const std::string& flag_token_file, const GetEnv& getenv,
                                        const std::string& default_file) {
  if (!flag_token.empty()) return flag_token;
  if (!flag_token_file.empty()) return read_token_file(flag_token_file);
  if (auto t = getenv("CAIRN_TOKEN"); t && !t->empty()) return *t;
  if (auto f = getenv("CAIRN_TOKEN_FILE"); f && !f->empty()) return read_token_file(*f);
  struct stat st {};
  if (!default_file.empty() && ::stat(default_file.c_str(), &st) == 0)
    return read_token_file(default_file);
  return std::string();
}

std::string format_table(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], row[i].size());
  };
  measure(header);
  for (const auto& r : rows) measure(r);
  std::string out;
  auto emit = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < width.size(); ++i) {
      const std::string cell = i < row.size() ? row[i] : std::string();
      line += cell;
      if (i + 1 < width.size()) line += std::string(width[i] - cell.size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  };
  emit(header);
  for (const auto& r : rows) emit(r);
  return out;
}

std::string format_fields(const std::vector<std::pair<std::string, std::string>>& fields) {
  size_t width = 0;
  for (const auto& [k, v] : fields) width = std::max(width, k.size());
  std::string out;
  for (const auto& [k, v] : fields)
    out += k + ":" + std::string(width - k.size() + 1, ' ') + v + "\n";
  return out;
}

std::string format_volume_table(const cairn::v1::ListVolumesResponse& list) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& v : list.volumes()) {
    rows.push_back({v.name(), format_size_bytes(v.size_bytes()),
                    format_size_bytes(v.allocated_bytes()),
                    std::to_string(v.attached_connections())});
    if (v.has_cluster()) {
      int in_sync = 0;
      for (const auto& r : v.cluster().replicas()) in_sync += r.state() == "in_sync";
      rows.back().push_back(v.cluster().primary());
      rows.back().push_back(std::to_string(in_sync) + "/" + std::to_string(v.cluster().replicas_size()));
    }
  }
  if (!list.volumes().empty() && list.volumes(0).has_cluster())
    return format_table({"NAME", "SIZE", "ALLOCATED", "ATTACHED", "PRIMARY", "IN SYNC"}, rows);
  return format_table({"NAME", "SIZE", "ALLOCATED", "ATTACHED"}, rows);
}

// Cluster mode's section of `volume info`: primary, epoch, NBD URI, one line per replica.
std::string format_cluster_section(const cairn::v1::ClusterVolume& c) {
  std::vector<std::pair<std::string, std::string>> fields = {
      {"primary", c.primary() + (c.serving() ? " (serving)" : " (not serving)")},
      {"nbd uri", or_dash(c.nbd_uri())},
      {"epoch", std::to_string(c.epoch())},
      {"rebuild rate", c.rebuild_rate_bytes_per_s() == 0
                           ? std::string("unbounded")
                           : format_size_bytes(c.rebuild_rate_bytes_per_s()) + "/s"},
  };
  for (const auto& r : c.replicas()) {
    std::string state = r.state() == "in_sync" ? "in sync" : r.state();
    if (r.state() == "resyncing" && r.resync_total_bytes() > 0) {
      const double done = double(r.resync_done_bytes()) / double(r.resync_total_bytes());
      char buf[160];
      const double rate = r.resync_bytes_per_s();
      const double eta = rate > 0 ? double(r.resync_total_bytes() - std::min(r.resync_total_bytes(), r.resync_done_bytes())) / rate : 0;
      snprintf(buf, sizeof(buf), " %.0f%% (%s of %s, %s/s, ETA %.0f s)", done * 100,
               format_size_bytes(r.resync_done_bytes()).c_str(),
               format_size_bytes(r.resync_total_bytes()).c_str(),
               format_size_bytes(static_cast<uint64_t>(rate)).c_str(), eta);
      state += buf;
    } else if (r.state() == "in_sync" && r.resync_done_bytes() > 0) {
      state += " (last resync: " + format_size_bytes(r.resync_done_bytes()) + ", " +
               format_size_bytes(r.resync_data_bytes()) + " of it data)";
    }
    fields.push_back({"replica " + r.node(), state});
  }
  return format_fields(fields);
}

std::string format_volume_info(const cairn::v1::Volume& v) {
  if (v.has_cluster()) {
    return format_fields({
               {"name", v.name()},
               {"size", bytes_with_exact(v.size_bytes())},
               {"created", format_unix_time(v.created_unix_s())},
               {"nbd export", or_dash(v.nbd_export())},
           }) +
           format_cluster_section(v.cluster());
  }
  return format_fields({
      {"name", v.name()},
      {"id", std::to_string(v.id())},
      {"size", bytes_with_exact(v.size_bytes())},
      {"allocated", bytes_with_exact(v.allocated_bytes())},
      {"exclusive", bytes_with_exact(v.exclusive_bytes())},
      {"shared", bytes_with_exact(v.shared_bytes())},
      {"extent size", format_size_bytes(v.extent_size_bytes())},
      {"created", format_unix_time(v.created_unix_s())},
      {"attached", std::to_string(v.attached_connections()) + " connection(s)"},
      {"nbd export", or_dash(v.nbd_export())},
      {"parent", or_dash(v.parent())},
  });
}

std::string format_snapshot_table(const cairn::v1::ListSnapshotsResponse& list) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : list.snapshots()) {
    rows.push_back({s.name(), format_unix_time(s.created_unix_s()),
                    format_size_bytes(s.size_bytes()), format_size_bytes(s.exclusive_bytes()),
                    format_size_bytes(s.shared_bytes()), std::to_string(s.clones())});
  }
  return format_table({"NAME", "CREATED", "SIZE", "EXCLUSIVE", "SHARED", "CLONES"}, rows);
}

std::string format_snapshot_info(const cairn::v1::Snapshot& s) {
  return format_fields({
      {"name", s.name()},
      {"volume", s.volume()},
      {"id", std::to_string(s.id())},
      {"created", format_unix_time(s.created_unix_s())},
      {"size", bytes_with_exact(s.size_bytes())},
      {"exclusive", bytes_with_exact(s.exclusive_bytes())},
      {"shared", bytes_with_exact(s.shared_bytes())},
      {"clones", std::to_string(s.clones())},
      {"nbd export", or_dash(s.nbd_export())},
  });
}

std::string format_exact_size(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  size_t u = 0;
  while (bytes != 0 && bytes % 1024 == 0 && u + 1 < std::size(units)) {
    bytes /= 1024;
    ++u;
  }
  return std::to_string(bytes) + " " + units[u];
}

std::string format_diff(const cairn::v1::DiffResponse& diff) {
  if (diff.runs().empty()) return "no changes\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : diff.runs()) {
    rows.push_back({format_exact_size(r.offset_bytes()), format_exact_size(r.length_bytes()),
                    r.zero() ? "zero" : "data"});
  }
  return format_table({"OFFSET", "LENGTH", "KIND"}, rows) + "total: " +
         std::to_string(diff.runs_size()) + " run(s), " + bytes_with_exact(diff.changed_bytes()) +
         " changed, " + bytes_with_exact(diff.zeroed_bytes()) + " zeroed\n";
}

std::optional<std::pair<std::string, std::string>> split_snapshot_ref(const std::string& ref) {
  size_t at = ref.find('@');
  if (at == std::string::npos || at == 0 || at + 1 == ref.size() ||
      ref.find('@', at + 1) != std::string::npos)
    return std::nullopt;
  return std::make_pair(ref.substr(0, at), ref.substr(at + 1));
}

std::string format_node_status(const cairn::v1::NodeStatus& s) {
  std::string used = format_size_bytes(s.used_bytes());
  if (s.capacity_bytes() > 0) {
    char pct[32];
    snprintf(pct, sizeof(pct), " (%.1f%%)",
             100.0 * static_cast<double>(s.used_bytes()) / static_cast<double>(s.capacity_bytes()));
    used += pct;
  }
  return format_fields({
      {"version", or_dash(s.version())},
      {"data dir", or_dash(s.data_dir())},
      {"capacity", format_size_bytes(s.capacity_bytes())},
      {"used", used},
      {"volumes", std::to_string(s.volumes())},
      {"nbd connections", std::to_string(s.nbd_connections())},
      {"nbd tcp", or_dash(s.nbd_tcp())},
      {"nbd socket", or_dash(s.nbd_socket())},
  });
}

std::string format_node_table(const cairn::v1::ListNodesResponse& list) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& n : list.nodes()) {
    rows.push_back({n.id(), or_dash(n.nbd()), or_dash(n.api()), or_dash(n.state()),
                    format_size_bytes(n.capacity_bytes()), format_size_bytes(n.used_bytes()),
                    std::to_string(n.volumes())});
  }
  return format_table({"ID", "NBD", "API", "STATE", "CAPACITY", "USED", "VOLUMES"}, rows);
}

std::string format_json(const google::protobuf::Message& msg) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(msg, &out, opts);
  if (out.empty() || out.back() != '\n') out.push_back('\n');
  return out;
}

int run_cli(int argc, const char* const* argv, std::ostream& out, std::ostream& err,
            const GetEnv& getenv) {
  CLI::App app{"cairn: manage Cairn volumes through the blockd control API"};
  app.name("cairn");
  app.fallthrough();  // global options are accepted after the subcommand too
  app.require_subcommand(1);

  std::string api_url;
  std::string token;
  std::string token_file;
  bool json = false;
  app.add_option("--api", api_url,
                 "control API URL (env CAIRN_API, default " + std::string(kDefaultApiUrl) + ")");
  app.add_option("--token", token, "admin token (env CAIRN_TOKEN)");
  app.add_option("--token-file", token_file,
                 "file holding the admin token (env CAIRN_TOKEN_FILE, default " +
                     std::string(kDefaultTokenFile) + " if present)");
  app.add_flag("--json", json, "print the API's JSON answer");

  auto* volume =
      app.add_subcommand("volume", "create, list, inspect, resize, delete, clone volumes");
  volume->require_subcommand(1);
  std::string name;
  std::string size_text;
  bool force = false;

  auto* create = volume->add_subcommand("create", "create a thin volume");
  create->add_option("NAME", name, "volume name")->required();
  create->add_option("--size", size_text, "size, e.g. 10G")->required()->check(kSizeValidator);
  uint32_t replicas = 0;
  create->add_option("--replicas", replicas,
                     "cluster mode: copies on distinct nodes (default 3)")->check(CLI::Range(1, 16));
  auto* list = volume->add_subcommand("list", "list volumes");
  auto* info = volume->add_subcommand("info", "show one volume");
  info->add_option("NAME", name, "volume name")->required();
  auto* resize = volume->add_subcommand("resize", "grow a volume");
  resize->add_option("NAME", name, "volume name")->required();
  resize->add_option("--size", size_text, "new size, e.g. 20G")->required()->check(kSizeValidator);
  auto* del = volume->add_subcommand("delete", "delete a volume");
  del->add_option("NAME", name, "volume name")->required();
  del->add_flag("--force", force, "delete even while NBD clients are attached");
  std::string source;
  auto* clone = volume->add_subcommand("clone", "create a writable volume from a snapshot");
  clone->add_option("SOURCE", source, "the snapshot, as VOL@SNAP")->required();
  clone->add_option("NEWVOL", name, "name of the new volume")->required();
  auto* flatten =
      volume->add_subcommand("flatten", "copy what a clone shares with its parent, then detach");
  flatten->add_option("NAME", name, "volume name")->required();
  std::string attach_node;
  auto* attach = volume->add_subcommand(
      "attach", "cluster mode: make a node the volume's primary (serves NBD; bumps the epoch)");
  attach->add_option("NAME", name, "volume name")->required();
  attach->add_option("--node", attach_node, "node id (default: the node of --api)");
  std::string rate_text;
  auto* rebuild_rate = volume->add_subcommand(
      "rebuild-rate", "cluster mode: bound the volume's resync/rebuild bandwidth");
  rebuild_rate->add_option("NAME", name, "volume name")->required();
  rebuild_rate->add_option("RATE", rate_text, "bytes per second, e.g. 100M (0 = unbounded)")
      ->required()->check(kSizeValidator);

  auto* snapshot = app.add_subcommand("snapshot", "create, list, delete, diff snapshots");
  snapshot->require_subcommand(1);
  std::string snap;
  std::string from;
  std::string to;
  auto* snap_create =
      snapshot->add_subcommand("create", "snapshot a volume (VOL SNAP or VOL@SNAP)");
  snap_create->add_option("VOL", name, "volume name, or VOL@SNAP")->required();
  snap_create->add_option("SNAP", snap, "snapshot name");
  auto* snap_list = snapshot->add_subcommand("list", "list a volume's snapshots, oldest first");
  snap_list->add_option("VOL", name, "volume name")->required();
  auto* snap_info = snapshot->add_subcommand("info", "show one snapshot (VOL SNAP or VOL@SNAP)");
  snap_info->add_option("VOL", name, "volume name, or VOL@SNAP")->required();
  snap_info->add_option("SNAP", snap, "snapshot name");
  auto* snap_delete =
      snapshot->add_subcommand("delete", "delete a snapshot (VOL SNAP or VOL@SNAP)");
  snap_delete->add_option("VOL", name, "volume name, or VOL@SNAP")->required();
  snap_delete->add_option("SNAP", snap, "snapshot name");
  auto* snap_diff = snapshot->add_subcommand("diff", "list the ranges changed between two points");
  snap_diff->add_option("VOL", name, "volume name")->required();
  snap_diff->add_option("--from", from, "older snapshot (default: the empty volume)");
  snap_diff->add_option("--to", to, "newer snapshot (default: the live volume)");

  auto* status = app.add_subcommand("status", "show the node's status");
  auto* node = app.add_subcommand("node", "the cluster's nodes");
  node->require_subcommand(1);
  auto* node_list = node->add_subcommand("list", "list the nodes registered in the cluster");
  S3Flags s3_flags;
  add_s3_flags(app, s3_flags);
  auto objectd_commands = add_objectd_commands(app);  // tenant, objects (cli_objects.cc)
  auto backup_commands = add_backup_commands(app);    // backup (cli_backup.cc)

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e, out, err);  // --help
    err << "cairn: error: " << e.what() << " (see --help)\n";
    return 2;
  }
  if (auto rc = run_objectd_commands(*objectd_commands, s3_flags, json, out, err, getenv)) return *rc;

  auto usage = [&](const std::string& message) {
    err << "cairn: error: " << message << " (see --help)\n";
    return 2;
  };
  // VOL SNAP, or VOL@SNAP alone.
  if (*snap_create || *snap_info || *snap_delete) {
    if (snap.empty()) {
      auto ref = split_snapshot_ref(name);
      if (!ref) return usage("give the snapshot as VOL SNAP or VOL@SNAP, not \"" + name + "\"");
      name = ref->first;
      snap = ref->second;
    } else if (name.find('@') != std::string::npos) {
      return usage("give the snapshot as VOL SNAP or VOL@SNAP, not both");
    }
  }
  std::string clone_volume, clone_snapshot;
  if (*clone) {
    auto ref = split_snapshot_ref(source);
    if (!ref) return usage("the clone source must be VOL@SNAP, not \"" + source + "\"");
    clone_volume = ref->first;
    clone_snapshot = ref->second;
  }

  if (api_url.empty()) api_url = getenv("CAIRN_API").value_or(kDefaultApiUrl);
  auto resolved = resolve_token(token, token_file, getenv);
  if (!resolved) {
    err << "cairn: error: " << resolved.error().message << "\n";
    return 1;
  }
  ControlClient client(api_url, resolved.value());

  auto fail = [&](const ClientError& e) {
    err << "cairn: error: " << e.message;
    if (e.http_status == 401)
      err << " (give the admin token with --token, --token-file or CAIRN_TOKEN)";
    err << "\n";
    return 1;
  };
  if (auto rc = run_backup_commands(*backup_commands, client, s3_flags, json, out, err, getenv)) return *rc;
  auto show_volume = [&](const ClientResult<cairn::v1::Volume>& r) {
    if (!r) return fail(r.error());
    out << (json ? format_json(r.value()) : format_volume_info(r.value()));
    return 0;
  };
  uint64_t size_bytes = size_text.empty() ? 0 : parse_size_bytes(size_text).value_or(0);

  if (*create) return show_volume(client.create_volume(name, size_bytes, replicas));
  if (*attach) return show_volume(client.attach_volume(name, attach_node));
  if (*rebuild_rate) return show_volume(client.set_rebuild_rate(name, parse_size_bytes(rate_text).value_or(0)));
  if (*info) return show_volume(client.get_volume(name));
  if (*resize) return show_volume(client.resize_volume(name, size_bytes));
  if (*list) {
    auto r = client.list_volumes();
    if (!r) return fail(r.error());
    if (json)
      out << format_json(r.value());
    else if (r.value().volumes().empty())
      out << "no volumes\n";
    else
      out << format_volume_table(r.value());
    return 0;
  }
  if (*del) {
    auto r = client.delete_volume(name, force);
    if (!r) return fail(r.error());
    if (!json) out << "deleted volume " << name << "\n";
    return 0;
  }
  if (*clone) return show_volume(client.clone_volume(clone_volume, clone_snapshot, name));
  if (*flatten) return show_volume(client.flatten_volume(name));
  auto show_snapshot = [&](const ClientResult<cairn::v1::Snapshot>& r) {
    if (!r) return fail(r.error());
    out << (json ? format_json(r.value()) : format_snapshot_info(r.value()));
    return 0;
  };
  if (*snap_create) return show_snapshot(client.create_snapshot(name, snap));
  if (*snap_info) return show_snapshot(client.get_snapshot(name, snap));
  if (*snap_list) {
    auto r = client.list_snapshots(name);
    if (!r) return fail(r.error());
    if (json)
      out << format_json(r.value());
    else if (r.value().snapshots().empty())
      out << "no snapshots of " << name << "\n";
    else
      out << format_snapshot_table(r.value());
    return 0;
  }
  if (*snap_delete) {
    auto r = client.delete_snapshot(name, snap);
    if (!r) return fail(r.error());
    if (!json) out << "deleted snapshot " << name << "@" << snap << "\n";
    return 0;
  }
  if (*snap_diff) {
    auto r = client.diff(name, from, to);
    if (!r) return fail(r.error());
    out << (json ? format_json(r.value()) : format_diff(r.value()));
    return 0;
  }
  if (*node_list) {
    auto r = client.list_nodes();
    if (!r) return fail(r.error());
    if (json)
      out << format_json(r.value());
    else if (r.value().nodes().empty())
      out << "no nodes registered\n";
    else
      out << format_node_table(r.value());
    return 0;
  }
  if (*status) {
    auto r = client.status();
    if (!r) return fail(r.error());
    out << (json ? format_json(r.value()) : format_node_status(r.value()));
    return 0;
  }
  err << "cairn: error: no command given\n";
  return 2;
}

}  // namespace cairn::client
