// cairn: the operator CLI. All logic lives in client/src/cli.cc (run_cli).
#include <cstdlib>
#include <iostream>

#include "src/cli.h"

int main(int argc, char** argv) {
  auto getenv = [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  };
  return cairn::client::run_cli(argc, argv, std::cout, std::cerr, getenv);
}
