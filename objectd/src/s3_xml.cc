#include "s3_xml.h"

#include <boost/property_tree/ptree.hpp>
#include <boost/property_tree/xml_parser.hpp>
#include <charconv>
#include <optional>
#include <sstream>
#include <vector>

#include "objectd/errors.h"

namespace cairn::objectd {
namespace {

namespace pt = boost::property_tree;
constexpr int kDepthMax = 8;

// Checks the element structure before the (recursive, end-tag-lenient) parser sees the
// document: nesting at most kDepthMax deep, and every end tag closing the element it should
// (property_tree's parser does not compare end-tag names).
bool well_nested(std::string_view xml) {
  std::vector<std::string_view> open;
  for (size_t i = 0; i < xml.size(); ++i) {
    if (xml[i] != '<') continue;
    if (xml.substr(i, 4) == "<!--") {
      size_t e = xml.find("-->", i + 4);
      if (e == std::string_view::npos) return false;
      i = e + 2;
      continue;
    }
    if (xml.substr(i, 9) == "<![CDATA[") {
      size_t e = xml.find("]]>", i + 9);
      if (e == std::string_view::npos) return false;
      i = e + 2;
      continue;
    }
    size_t close = xml.find('>', i);
    if (close == std::string_view::npos) return false;
    std::string_view tag = xml.substr(i + 1, close - i - 1);
    i = close;
    if (tag.empty() || tag[0] == '?' || tag[0] == '!') continue;
    bool end_tag = tag[0] == '/';
    if (end_tag) tag.remove_prefix(1);
    bool self_closing = !end_tag && tag.back() == '/';
    size_t name_end = tag.find_first_of(" \t\r\n/");
    std::string_view name = tag.substr(0, name_end);
    if (name.empty()) return false;
    if (end_tag) {
      if (open.empty() || open.back() != name) return false;
      open.pop_back();
    } else if (!self_closing) {
      open.push_back(name);
      if (open.size() > static_cast<size_t>(kDepthMax)) return false;
    }
  }
  return open.empty();
}

// Parses `xml` and returns the root element named `root` (its attributes stripped).
std::optional<pt::ptree> parse_root(std::string_view xml, std::string_view root) {
  if (!well_nested(xml)) return std::nullopt;
  try {
    std::istringstream in{std::string(xml)};
    pt::ptree tree;
    pt::read_xml(in, tree, 0);
    std::optional<pt::ptree> out;
    for (auto& [name, child] : tree) {
      if (name == "<xmlcomment>") continue;
      if (out || name != root) return std::nullopt;
      out = child;
    }
    return out;
  } catch (...) {
    return std::nullopt;
  }
}

std::string_view unquote(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\n' || s.front() == '\t' || s.front() == '\r'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  return s;
}

}  // namespace

XmlWriter::XmlWriter(std::string_view root, std::string_view ns) : root_(root) {
  out_ = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<";
  out_ += root;
  if (!ns.empty()) {
    out_ += " xmlns=\"";
    out_ += ns;
    out_ += "\"";
  }
  out_ += ">";
}

void XmlWriter::open(std::string_view tag) {
  out_ += "<";
  out_ += tag;
  out_ += ">";
}

void XmlWriter::close(std::string_view tag) {
  out_ += "</";
  out_ += tag;
  out_ += ">";
}

void XmlWriter::element(std::string_view tag, std::string_view text) {
  open(tag);
  out_ += escape(text);
  close(tag);
}

void XmlWriter::element(std::string_view tag, uint64_t value) {
  element(tag, std::string_view(std::to_string(value)));
}

void XmlWriter::element_bool(std::string_view tag, bool value) {
  element(tag, std::string_view(value ? "true" : "false"));
}

std::string XmlWriter::finish() {
  close(root_);
  return std::move(out_);
}

std::string XmlWriter::escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
          static const char* kHex = "0123456789ABCDEF";
          out += "&#x";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
          out += ";";
        } else {
          out.push_back(ch);
        }
    }
  }
  return out;
}

Result<std::vector<PartInfo>> parse_complete_multipart(std::string_view xml) {
  auto root = parse_root(xml, "CompleteMultipartUpload");
  if (!root) return ObjErrc::malformed_xml;
  std::vector<PartInfo> parts;
  for (auto& [name, node] : *root) {
    if (name == "<xmlattr>" || name == "<xmlcomment>") continue;
    if (name != "Part") return ObjErrc::malformed_xml;
    PartInfo p;
    bool have_number = false, have_etag = false;
    for (auto& [field, value] : node) {
      const std::string& text = value.data();
      if (field == "PartNumber") {
        std::string_view t = unquote(text);
        int64_t n = 0;
        auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), n);
        if (ec != std::errc() || end != t.data() + t.size()) return ObjErrc::malformed_xml;
        if (n < 1 || n > kPartNumberMax) return ObjErrc::invalid_argument;
        p.part_number = static_cast<uint32_t>(n);
        have_number = true;
      } else if (field == "ETag") {
        p.etag = std::string(unquote(text));
        have_etag = true;
      } else if (field.rfind("Checksum", 0) == 0 && field.size() > 8) {
        std::string algo = field.substr(8);
        for (char& c : algo) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
        p.checksums[algo] = std::string(unquote(text));
      }
    }
    if (!have_number || !have_etag) return ObjErrc::malformed_xml;
    if (!parts.empty() && p.part_number <= parts.back().part_number)
      return ObjErrc::invalid_part_order;
    parts.push_back(std::move(p));
    if (parts.size() > kPartNumberMax) return ObjErrc::malformed_xml;
  }
  if (parts.empty()) return ObjErrc::malformed_xml;
  return parts;
}

Result<DeleteObjectsRequest> parse_delete_objects(std::string_view xml) {
  auto root = parse_root(xml, "Delete");
  if (!root) return ObjErrc::malformed_xml;
  DeleteObjectsRequest out;
  for (auto& [name, node] : *root) {
    if (name == "<xmlattr>" || name == "<xmlcomment>") continue;
    if (name == "Quiet") {
      std::string_view v = unquote(node.data());
      if (v == "true" || v == "True" || v == "TRUE") {
        out.quiet = true;
      } else if (v != "false" && v != "False" && v != "FALSE") {
        return ObjErrc::malformed_xml;
      }
    } else if (name == "Object") {
      std::optional<std::string> key;
      for (auto& [field, value] : node) {
        if (field == "Key") key = value.data();
      }
      if (!key) return ObjErrc::malformed_xml;
      out.keys.push_back(std::move(*key));
      if (out.keys.size() > 1000) return ObjErrc::malformed_xml;
    } else {
      return ObjErrc::malformed_xml;
    }
  }
  if (out.keys.empty()) return ObjErrc::malformed_xml;
  return out;
}

Result<bool> parse_access_control_policy(std::string_view xml, const std::string& owner) {
  auto root = parse_root(xml, "AccessControlPolicy");
  if (!root) return ObjErrc::malformed_xml;
  bool public_read = false;
  auto acl = root->get_child_optional("AccessControlList");
  if (!acl) return ObjErrc::malformed_xml;
  for (auto& [name, grant] : *acl) {
    if (name == "<xmlattr>" || name == "<xmlcomment>") continue;
    if (name != "Grant") return ObjErrc::malformed_xml;
    auto grantee = grant.get_child_optional("Grantee");
    auto permission = grant.get_optional<std::string>("Permission");
    if (!grantee || !permission) return ObjErrc::malformed_xml;
    std::string perm(unquote(*permission));
    auto uri = grantee->get_optional<std::string>("URI");
    auto id = grantee->get_optional<std::string>("ID");
    if (uri) {
      std::string u(unquote(*uri));
      if (u != "http://acs.amazonaws.com/groups/global/AllUsers" || perm != "READ")
        return ObjErrc::not_implemented;
      public_read = true;
    } else if (id) {
      if (std::string(unquote(*id)) != owner || perm != "FULL_CONTROL")
        return ObjErrc::not_implemented;
    } else {
      return ObjErrc::not_implemented;  // e-mail grantees
    }
  }
  return public_read;
}

Status parse_create_bucket_configuration(std::string_view xml, std::string& location) {
  bool blank = true;
  for (char c : xml)
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') blank = false;
  if (blank) return ok();
  auto root = parse_root(xml, "CreateBucketConfiguration");
  if (!root) return ObjErrc::malformed_xml;
  for (auto& [name, node] : *root) {
    if (name == "LocationConstraint") location = std::string(unquote(node.data()));
  }
  return ok();
}

}  // namespace cairn::objectd
