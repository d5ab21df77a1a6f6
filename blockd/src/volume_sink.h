// VolumeSink: a restore's writes into a blockd volume from plain threads (restore workers,
// the hydrator), through a Reactor of its own. Thread-safe.
#pragma once

#include <memory>
#include <string_view>

#include "blockd/volume_store.h"
#include "common/reactor_thread.h"
#include "snapshot/backup.h"

namespace cairn::blockd {

class VolumeSink final : public backup::RestoreSink {
 public:
  explicit VolumeSink(std::shared_ptr<Volume> volume) : volume_(std::move(volume)) {}
  Status write(uint64_t offset, std::string_view data) override {
    return reactor_.run(volume_->write(offset, data.size(), data.data(), false));
  }
  Status flush() { return reactor_.run(volume_->flush()); }

 private:
  std::shared_ptr<Volume> volume_;
  ReactorThread reactor_;
};

}  // namespace cairn::blockd
