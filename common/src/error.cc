#include "common/result.h"

#include <cerrno>
#include <string>

namespace cairn {
namespace {

class CairnCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "cairn"; }
  std::string message(int c) const override {
    switch (static_cast<Errc>(c)) {
      case Errc::ok: return "ok";
      case Errc::invalid_argument: return "invalid argument";
      case Errc::not_found: return "not found";
      case Errc::already_exists: return "already exists";
      case Errc::no_space: return "no space left";
      case Errc::io_error: return "I/O error";
      case Errc::busy: return "busy";
      case Errc::permission_denied: return "permission denied";
      case Errc::out_of_range: return "out of range";
      case Errc::corrupt: return "corrupt";
      case Errc::unavailable: return "unavailable";
      case Errc::too_large: return "too large";
      case Errc::unsupported: return "unsupported";
    }
    return "unknown cairn error " + std::to_string(c);
  }
};

}  // namespace

const std::error_category& cairn_category() noexcept {
  static const CairnCategory category;
  return category;
}

int to_errno(const std::error_code& ec) noexcept {
  if (!ec) return 0;
  if (ec.category() == std::system_category() || ec.category() == std::generic_category())
    return ec.value();
  if (ec.category() != cairn_category()) return EIO;
  switch (static_cast<Errc>(ec.value())) {
    case Errc::ok: return 0;
    case Errc::invalid_argument: return EINVAL;
    case Errc::not_found: return ENOENT;
    case Errc::already_exists: return EEXIST;
    case Errc::no_space: return ENOSPC;
    case Errc::busy: return EBUSY;
    case Errc::permission_denied: return EPERM;
    case Errc::out_of_range: return EINVAL;
    case Errc::too_large: return EOVERFLOW;
    case Errc::unsupported: return ENOTSUP;
    case Errc::unavailable: return ESHUTDOWN;
    case Errc::io_error:
    case Errc::corrupt: return EIO;
  }
  return EIO;
}

}  // namespace cairn
