// Integration tests of the C++ client against a real `ckptd` process on
// loopback (one server per test, see ClientTest).
#include "ckptd/client.h"

#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/assert_ok.h"

namespace ckptd {
namespace {

using ::ckptd::testing::ServerProcess;
using ::google::protobuf::util::MessageDifferencer;

#define EXPECT_OK_STATUS(expr)                     \
  do {                                             \
    const absl::Status _st = (expr);               \
    EXPECT_TRUE(_st.ok()) << #expr << ": " << _st; \
  } while (0)

using Segment = std::variant<std::string, int64_t>;
using Path = std::vector<Segment>;

// A flattened state and the tensor bytes it points at (stable addresses,
// shared by copies).
class StateBuilder {
 public:
  void Container(const Path& path, v1::ContainerInfo::Kind kind) {
    ManifestEntry e = Entry(path);
    e.mutable_container()->set_kind(kind);
    Add(std::move(e), {});
  }
  void Value(const Path& path, const v1::Value& value) {
    ManifestEntry e = Entry(path);
    *e.mutable_value() = value;
    Add(std::move(e), {});
  }
  void Tensor(const Path& path, DType dtype, std::vector<int64_t> shape,
              std::string bytes) {
    ManifestEntry e = Entry(path);
    e.mutable_tensor()->set_dtype(dtype);
    for (int64_t d : shape) e.mutable_tensor()->add_shape(d);
    bytes_->push_back(std::move(bytes));
    TensorData t;
    t.data = bytes_->back().data();
    t.byte_length = bytes_->back().size();
    Add(std::move(e), t);
  }
  // A tensor of `shape` x `dtype` filled with random bytes from `rng`.
  void RandomTensor(const Path& path, DType dtype, std::vector<int64_t> shape,
                    std::mt19937_64& rng) {
    uint64_t n = DTypeSize(dtype);
    for (int64_t d : shape) n *= d;
    std::string bytes(n, '\0');
    for (size_t i = 0; i + 8 <= n; i += 8) {
      const uint64_t v = rng();
      std::memcpy(&bytes[i], &v, 8);
    }
    for (size_t i = n / 8 * 8; i < n; ++i) bytes[i] = static_cast<char>(rng());
    Tensor(path, dtype, std::move(shape), std::move(bytes));
  }

  PushRequest Request(const std::string& run, int64_t step,
                      std::map<std::string, double> metrics = {}) const {
    PushRequest req;
    req.run = run;
    req.step = step;
    req.epoch = step / 10;
    req.metrics = std::move(metrics);
    req.env.set_torch_version("2.1.0");
    req.env.set_python_version("3.11.2");
    (*req.env.mutable_labels())["suite"] = "client_test";
    req.entries = entries_;
    return req;
  }
  const std::vector<PushEntry>& entries() const { return entries_; }
  // Bytes of the tensor at entry `i`.
  std::string TensorBytes(size_t i) const {
    const TensorData& t = entries_[i].tensor;
    return std::string(static_cast<const char*>(t.data), t.byte_length);
  }
  std::vector<PushEntry>& mutable_entries() { return entries_; }

 private:
  static ManifestEntry Entry(const Path& path) {
    ManifestEntry e;
    for (const Segment& s : path) {
      if (std::holds_alternative<std::string>(s)) {
        e.add_path()->set_key(std::get<std::string>(s));
      } else {
        e.add_path()->set_int_key(std::get<int64_t>(s));
      }
    }
    return e;
  }
  void Add(ManifestEntry e, TensorData t) {
    entries_.push_back(PushEntry{std::move(e), t});
  }

  // Shared, so copies of the builder keep pointing at live bytes.
  std::shared_ptr<std::deque<std::string>> bytes_ =
      std::make_shared<std::deque<std::string>>();
  std::vector<PushEntry> entries_;
};

v1::Value IntValue(int64_t v) {
  v1::Value out;
  out.set_int_value(v);
  return out;
}
v1::Value FloatValue(double v) {
  v1::Value out;
  out.set_float_value(v);
  return out;
}
v1::Value StringValue(std::string v) {
  v1::Value out;
  out.set_string_value(std::move(v));
  return out;
}
v1::Value BoolValue(bool v) {
  v1::Value out;
  out.set_bool_value(v);
  return out;
}
v1::Value NoneValue() {
  v1::Value out;
  out.set_none(true);
  return out;
}
v1::Value ListValue(std::vector<v1::Value> items, bool is_tuple) {
  v1::Value out;
  for (auto& i : items) *out.mutable_list_value()->add_items() = std::move(i);
  out.mutable_list_value()->set_is_tuple(is_tuple);
  return out;
}

constexpr int64_t kMiB = 1 << 20;

// The dotted key path of an entry, as the client names it in errors.
std::string KeyOf(const ManifestEntry& e) {
  std::string out;
  for (const auto& seg : e.path()) {
    if (!out.empty()) out += '.';
    if (seg.has_key()) {
      out += seg.key();
    } else {
      absl::StrAppend(&out, seg.int_key());
    }
  }
  return out;
}

// A model + optimizer state: multi-MiB tensors, tiny packed ones, a
// zero-length one, scalars, typed values, nested dicts/lists with int keys.
// Tensor bytes depend on `seed`.
StateBuilder MakeState(uint64_t seed) {
  std::mt19937_64 rng(seed);
  StateBuilder s;
  using v1::ContainerInfo;
  s.Container({}, ContainerInfo::DICT);
  s.Container({"model"}, ContainerInfo::ORDERED_DICT);
  s.RandomTensor({"model", "embed.weight"}, v1::FLOAT32, {768, 1024}, rng);
  s.Container({"model", "layers"}, ContainerInfo::LIST);
  for (int64_t i = 0; i < 2; ++i) {
    s.Container({"model", "layers", i}, ContainerInfo::DICT);
    if (i == 0) {
      s.RandomTensor({"model", "layers", i, "w"}, v1::FLOAT32, {512, 1024},
                     rng);
    } else {
      s.RandomTensor({"model", "layers", i, "w"}, v1::BFLOAT16, {1024, 1536},
                     rng);
    }
    s.RandomTensor({"model", "layers", i, "b"}, v1::FLOAT32, {16}, rng);
  }
  s.RandomTensor({"model", "scale"}, v1::FLOAT64, {}, rng);
  s.RandomTensor({"model", "empty"}, v1::FLOAT32, {0, 4}, rng);
  s.RandomTensor({"model", "mask"}, v1::BOOL, {33}, rng);
  s.RandomTensor({"model", "ids"}, v1::INT64, {7}, rng);
  s.RandomTensor({"model", "half"}, v1::FLOAT16, {3, 5}, rng);
  s.Container({"optimizer"}, ContainerInfo::DICT);
  s.Container({"optimizer", "state"}, ContainerInfo::DICT);
  for (int64_t p = 0; p < 2; ++p) {
    s.Container({"optimizer", "state", p}, ContainerInfo::DICT);
    s.RandomTensor({"optimizer", "state", p, "step"}, v1::FLOAT32, {}, rng);
    s.RandomTensor({"optimizer", "state", p, "exp_avg"}, v1::FLOAT32, {64},
                   rng);
  }
  s.Container({"optimizer", "param_groups"}, ContainerInfo::LIST);
  s.Container({"optimizer", "param_groups", int64_t{0}}, ContainerInfo::DICT);
  s.Value({"optimizer", "param_groups", int64_t{0}, "lr"}, FloatValue(1e-3));
  s.Value({"optimizer", "param_groups", int64_t{0}, "betas"},
          ListValue({FloatValue(0.9), FloatValue(0.999)}, /*is_tuple=*/true));
  s.Value({"optimizer", "param_groups", int64_t{0}, "params"},
          ListValue({IntValue(0), IntValue(1)}, /*is_tuple=*/false));
  s.Value({"optimizer", "param_groups", int64_t{0}, "foreach"}, NoneValue());
  s.Value({"epoch"}, IntValue(static_cast<int64_t>(seed)));
  s.Value({"tag"}, StringValue(absl::StrCat("state-", seed)));
  s.Value({"amp"}, BoolValue(seed % 2 == 0));
  return s;
}

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>();
    ASSERT_OK(server_->Start());
    ClientOptions options;
    options.address = server_->address();
    options.rpc_timeout_seconds = 30;
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  absl::StatusOr<VersionInfo> Push(const StateBuilder& state,
                                   const std::string& run, int64_t step,
                                   std::map<std::string, double> metrics = {},
                                   PushOptions options = {}) {
    return client_->Push(state.Request(run, step, std::move(metrics)), options);
  }

  // Pulls `run`@`ref` and checks it equals `state` exactly: manifest entries
  // (paths, kinds, values, dtype, shape) and every tensor's bytes.
  void ExpectPullEquals(const std::string& run, const std::string& ref,
                        const StateBuilder& state, uint64_t want_version = 0) {
    SCOPED_TRACE(absl::StrCat("pull ", run, "@", ref));
    auto version = client_->GetVersion(run, ref, GetVersionOptions());
    ASSERT_TRUE(version.ok()) << version.status();
    if (want_version != 0) {
      EXPECT_EQ(version->info.version(), want_version);
    }
    EXPECT_EQ(version->info.state(), v1::COMMITTED);
    ASSERT_EQ(version->shards.size(), 1u);
    const ShardManifest& shard = version->shards[0];
    const auto& pushed = state.entries();
    ASSERT_EQ(static_cast<size_t>(shard.entries_size()), pushed.size());
    for (size_t i = 0; i < pushed.size(); ++i) {
      const ManifestEntry& got = shard.entries(static_cast<int>(i));
      const ManifestEntry& want = pushed[i].entry;
      EXPECT_TRUE(
          MessageDifferencer::Equals(StripTensor(got), StripTensor(want)))
          << "entry " << i << "\ngot:  " << got.ShortDebugString()
          << "\nwant: " << want.ShortDebugString();
    }
    auto tensors = client_->ReadAllTensors(*version, nullptr, PullOptions());
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    size_t next = 0;
    for (size_t i = 0; i < pushed.size(); ++i) {
      if (pushed[i].entry.kind_case() != ManifestEntry::kTensor) continue;
      ASSERT_LT(next, tensors->size());
      const OwnedTensor& t = (*tensors)[next++];
      EXPECT_EQ(t.entry, i);
      EXPECT_TRUE(t.bytes == state.TensorBytes(i))
          << "tensor bytes differ at entry " << i;
    }
    EXPECT_EQ(next, tensors->size());
  }

  // The entry without the fields the client fills in.
  static ManifestEntry StripTensor(const ManifestEntry& e) {
    ManifestEntry out = e;
    if (out.has_tensor()) {
      out.mutable_tensor()->clear_blob_digest();
      out.mutable_tensor()->clear_blob_offset();
      out.mutable_tensor()->clear_byte_length();
    }
    return out;
  }

  size_t VersionCount(const std::string& run) {
    ListVersionsRequest req;
    req.set_run(run);
    auto versions = client_->ListVersions(req);
    if (!versions.ok()) return 0;
    return versions->size();
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
};

TEST(DTypeSizeTest, EveryDType) {
  const struct {
    DType dtype;
    size_t size;
  } cases[] = {
      {v1::FLOAT32, 4},
      {v1::FLOAT64, 8},
      {v1::FLOAT16, 2},
      {v1::BFLOAT16, 2},
      {v1::COMPLEX32, 4},
      {v1::COMPLEX64, 8},
      {v1::COMPLEX128, 16},
      {v1::UINT8, 1},
      {v1::INT8, 1},
      {v1::INT16, 2},
      {v1::INT32, 4},
      {v1::INT64, 8},
      {v1::BOOL, 1},
      {v1::UINT16, 2},
      {v1::UINT32, 4},
      {v1::UINT64, 8},
      {v1::DTYPE_UNSPECIFIED, 0},
      {static_cast<DType>(99), 0},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(DTypeSize(c.dtype), c.size) << static_cast<int>(c.dtype);
  }
}

TEST(DefaultServerAddressTest, EnvironmentOverridesDefault) {
  const char* old = std::getenv("CKPTD_SERVER");
  std::string saved = old ? old : "";
  ::unsetenv("CKPTD_SERVER");
  EXPECT_EQ(DefaultServerAddress(), "127.0.0.1:50051");
  ::setenv("CKPTD_SERVER", "ckpt.example:7000", 1);
  EXPECT_EQ(DefaultServerAddress(), "ckpt.example:7000");
  if (old) {
    ::setenv("CKPTD_SERVER", saved.c_str(), 1);
  } else {
    ::unsetenv("CKPTD_SERVER");
  }
}

TEST_F(ClientTest, ThreeVersionsRoundTripWithLastBestAndRestart) {
  const std::string run = "llama-7b-sft";
  Policy policy;
  policy.set_monitor("val_loss");
  policy.set_mode(v1::MIN);
  ASSERT_OK(client_->SetPolicy(run, policy).status());

  const double losses[] = {0.5, 0.3, 0.4};
  std::vector<StateBuilder> states;
  for (int i = 0; i < 3; ++i) {
    states.push_back(MakeState(100 + i));
    auto info = Push(states.back(), run, (i + 1) * 100,
                     {{"val_loss", losses[i]}, {"train_loss", 1.0 - i * 0.1}});
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->version(), static_cast<uint64_t>(i + 1));
    EXPECT_EQ(info->state(), v1::COMMITTED);
    EXPECT_EQ(info->metrics().at("val_loss"), losses[i]);
    EXPECT_GT(info->total_bytes(), uint64_t{8 * kMiB});

    auto last = client_->GetVersion(run, "last", GetVersionOptions());
    ASSERT_TRUE(last.ok()) << last.status();
    EXPECT_EQ(last->info.version(), static_cast<uint64_t>(i + 1))
        << "`last` did not move";
  }
  auto best = client_->GetVersion(run, "best", GetVersionOptions());
  ASSERT_TRUE(best.ok()) << best.status();
  EXPECT_EQ(best->info.version(), 2u) << "best should be min val_loss";

  for (int i = 0; i < 3; ++i) {
    ExpectPullEquals(run, absl::StrCat(i + 1), states[i], i + 1);
  }
  ExpectPullEquals(run, "last", states[2], 3);
  ExpectPullEquals(run, "best", states[1], 2);

  // The client keeps its channels across the restart (it reconnects).
  ASSERT_OK(server_->Restart());
  for (int i = 0; i < 3; ++i) {
    ExpectPullEquals(run, absl::StrCat(i + 1), states[i], i + 1);
  }
  ExpectPullEquals(run, "last", states[2], 3);
  ExpectPullEquals(run, "best", states[1], 2);

  ListVersionsRequest list;
  list.set_run(run);
  list.set_page_size(2);  // exercises page tokens
  auto versions = client_->ListVersions(list);
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ((*versions)[i].version(), static_cast<uint64_t>(i + 1));
  }
}

TEST_F(ClientTest, RepushOfIdenticalStateUploadsAlmostNothing) {
  const std::string run = "dedup";
  StateBuilder state = MakeState(7);
  uint64_t last_done = 0, last_total = 0;
  PushOptions options;
  options.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_LE(done, total);
    last_done = done;
    last_total = total;
  };
  auto first = Push(state, run, 1, {}, options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(last_done, last_total);
  EXPECT_GE(first->uploaded_bytes(), uint64_t{8 * kMiB});

  auto second = Push(state, run, 2, {}, options);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->version(), 2u);
  EXPECT_EQ(second->total_bytes(), first->total_bytes());
  EXPECT_LE(second->uploaded_bytes(), uint64_t{4096})
      << "an unchanged state should dedup completely";
  EXPECT_EQ(last_total, 0u);
  ExpectPullEquals(run, "2", state, 2);
}

TEST_F(ClientTest, IdenticalTensorsInOnePushShareOneBlob) {
  std::mt19937_64 rng(3);
  StateBuilder s;
  s.Container({}, v1::ContainerInfo::DICT);
  s.RandomTensor({"a"}, v1::FLOAT32, {1024, 1024}, rng);
  s.Tensor({"b"}, v1::FLOAT32, {1024, 1024}, s.TensorBytes(1));  // == a
  s.Tensor({"c"}, v1::INT32, {4}, std::string(16, '\x01'));
  s.Tensor({"d"}, v1::INT32, {4}, std::string(16, '\x01'));  // == c
  auto info = Push(s, "shared", 1);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_LT(info->uploaded_bytes(), uint64_t{4 * kMiB + 4096});
  auto v = client_->GetVersion("shared", "1", GetVersionOptions());
  ASSERT_TRUE(v.ok()) << v.status();
  const ShardManifest& m = v->shards[0];
  EXPECT_EQ(m.entries(1).tensor().blob_digest(),
            m.entries(2).tensor().blob_digest());
  EXPECT_EQ(m.entries(3).tensor().blob_digest(),
            m.entries(4).tensor().blob_digest());
  EXPECT_EQ(m.entries(3).tensor().blob_offset(),
            m.entries(4).tensor().blob_offset());
  ExpectPullEquals("shared", "1", s, 1);
}

TEST_F(ClientTest, ManySmallTensorsAcrossSeveralPacks) {
  std::mt19937_64 rng(11);
  StateBuilder s;
  s.Container({}, v1::ContainerInfo::DICT);
  s.Container({"params"}, v1::ContainerInfo::LIST);
  for (int64_t i = 0; i < 3000; ++i) {
    s.RandomTensor({"params", i}, v1::FLOAT32, {1 + i % 97}, rng);
  }
  PushOptions options;
  options.pack_size = 64 << 10;  // many packs
  options.pack_threshold = 1 << 10;
  options.chunk_size = 64 << 10;
  options.streams = 3;
  auto info = Push(s, "small", 1, {}, options);
  ASSERT_TRUE(info.ok()) << info.status();
  auto v = client_->GetVersion("small", "1", GetVersionOptions());
  ASSERT_TRUE(v.ok()) << v.status();
  std::set<std::string> blobs;
  for (const auto& e : v->shards[0].entries()) {
    if (e.has_tensor()) blobs.insert(e.tensor().blob_digest());
  }
  EXPECT_GT(blobs.size(), 3u) << "expected several packs";
  EXPECT_LT(blobs.size(), 200u) << "expected small tensors to be packed";
  ExpectPullEquals("small", "1", s, 1);

  // Unchanged state: identical packs, nothing to upload.
  auto again = Push(s, "small", 2, {}, options);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->uploaded_bytes(), 0u);
}

TEST_F(ClientTest, ReadTensorsIntoPreallocatedBuffersSelectively) {
  StateBuilder s = MakeState(21);
  ASSERT_OK(Push(s, "select", 5).status());
  auto v = client_->GetVersion("select", "last", GetVersionOptions());
  ASSERT_TRUE(v.ok()) << v.status();
  // A large tensor, a packed tiny one, and the same tiny one twice.
  std::vector<size_t> picks;
  for (size_t i = 0; i < s.entries().size(); ++i) {
    const auto& e = s.entries()[i].entry;
    if (!e.has_tensor()) continue;
    const std::string key = e.path(e.path_size() - 1).key();
    if (key == "embed.weight" || key == "mask" || key == "exp_avg") {
      picks.push_back(i);
    }
  }
  ASSERT_EQ(picks.size(), 4u);
  picks.push_back(picks[1]);
  for (int streams : {1, 2, 8}) {
    SCOPED_TRACE(absl::StrCat("streams=", streams));
    std::vector<std::string> buffers;
    std::vector<TensorDestination> dests;
    buffers.reserve(picks.size());
    for (size_t i : picks) {
      buffers.emplace_back(s.entries()[i].tensor.byte_length, '\xee');
      TensorDestination d;
      d.entry = i;
      d.data = buffers.back().data();
      dests.push_back(d);
    }
    PullOptions options;
    options.streams = streams;
    uint64_t done = 0, total = 0;
    options.progress = [&](uint64_t d, uint64_t t) {
      done = d;
      total = t;
    };
    ASSERT_OK(client_->ReadTensors(*v, dests, options));
    EXPECT_EQ(done, total);
    for (size_t k = 0; k < picks.size(); ++k) {
      EXPECT_TRUE(buffers[k] == s.TensorBytes(picks[k])) << "pick " << k;
    }
  }
}

TEST_F(ClientTest, ReadTensorsRejectsBadDestinations) {
  StateBuilder s = MakeState(5);
  ASSERT_OK(Push(s, "dests", 1).status());
  auto v = client_->GetVersion("dests", "1", GetVersionOptions());
  ASSERT_TRUE(v.ok()) << v.status();
  char buf[16];
  const struct {
    const char* name;
    TensorDestination dest;
  } cases[] = {
      {"shard out of range", {1, 2, buf, {}}},
      {"entry out of range", {0, 100000, buf, {}}},
      {"a container, not a tensor", {0, 0, buf, {}}},
      {"no buffer", {0, 2, nullptr, {}}},
  };
  for (const auto& c : cases) {
    absl::Status st = client_->ReadTensors(*v, {c.dest}, PullOptions());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument)
        << c.name << ": " << st;
  }
}

TEST_F(ClientTest, MalformedTensorsAreRejectedBeforeAnyRpc) {
  const std::string run = "validated";
  StateBuilder good = MakeState(1);
  ASSERT_OK(Push(good, run, 1).status());
  auto runs_before = client_->ListRuns();
  ASSERT_TRUE(runs_before.ok()) << runs_before.status();

  struct Case {
    const char* name;
    std::function<void(std::vector<PushEntry>&)> damage;
    const char* key;
  };
  // Entry 2 is "model.embed.weight" (FLOAT32 [768, 1024]).
  const Case cases[] = {
      {"byte length != shape x dtype size",
       [](auto& es) { es[2].tensor.byte_length -= 4; }, "model.embed.weight"},
      {"negative dimension",
       [](auto& es) { es[2].entry.mutable_tensor()->set_shape(0, -768); },
       "model.embed.weight"},
      {"unknown dtype",
       [](auto& es) {
         es[2].entry.mutable_tensor()->set_dtype(v1::DTYPE_UNSPECIFIED);
       },
       "model.embed.weight"},
      {"no data", [](auto& es) { es[2].tensor.data = nullptr; },
       "model.embed.weight"},
  };
  for (const Case& c : cases) {
    for (const std::string& target : {run, std::string("fresh-run")}) {
      SCOPED_TRACE(absl::StrCat(c.name, " -> ", target));
      PushRequest req = good.Request(target, 2);
      ASSERT_EQ(KeyOf(req.entries[2].entry), "model.embed.weight");
      c.damage(req.entries);
      auto info = client_->Push(req, PushOptions());
      ASSERT_FALSE(info.ok());
      EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument)
          << info.status();
      EXPECT_NE(info.status().message().find(c.key), std::string::npos)
          << info.status();
    }
  }
  EXPECT_EQ(VersionCount(run), 1u);
  auto runs_after = client_->ListRuns();
  ASSERT_TRUE(runs_after.ok()) << runs_after.status();
  EXPECT_EQ(runs_after->size(), runs_before->size())
      << "a rejected push created a run";
  ListVersionsRequest pending;
  pending.set_run(run);
  pending.set_include_aborted(true);
  auto all = client_->ListVersions(pending);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 1u) << "a rejected push began a version";
}

TEST_F(ClientTest, BadRunNamesAreInvalidArgument) {
  StateBuilder s = MakeState(2);
  const std::string names[] = {
      "",
      "../x",
      "a/b",
      std::string(200, 'a'),
      std::string("bad\0name", 8),
      "-leading-dash",
      "sp ace",
  };
  for (const std::string& name : names) {
    SCOPED_TRACE(absl::StrCat("run name of ", name.size(),
                              " bytes: ", name.substr(0, 20)));
    auto v = client_->GetVersion(name, "last", GetVersionOptions());
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument)
        << v.status();
    auto pushed = Push(s, name, 1);
    EXPECT_EQ(pushed.status().code(), absl::StatusCode::kInvalidArgument)
        << pushed.status();
  }
  auto runs = client_->ListRuns();
  ASSERT_TRUE(runs.ok()) << runs.status();
  EXPECT_TRUE(runs->empty());
}

TEST_F(ClientTest, UnknownRunVersionOrAliasIsNotFound) {
  auto no_run = client_->GetVersion("no-such-run", "last", GetVersionOptions());
  EXPECT_EQ(no_run.status().code(), absl::StatusCode::kNotFound)
      << no_run.status();
  StateBuilder s = MakeState(3);
  ASSERT_OK(Push(s, "known", 1).status());
  for (const char* ref : {"99", "no-such-alias", "best"}) {
    auto v = client_->GetVersion("known", ref, GetVersionOptions());
    EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound)
        << ref << ": " << v.status();
  }
  ListVersionsRequest req;
  req.set_run("no-such-run");
  EXPECT_EQ(client_->ListVersions(req).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, AliasesPinsAndHistory) {
  StateBuilder a = MakeState(31), b = MakeState(32);
  ASSERT_OK(Push(a, "hist", 10, {{"val_loss", 2.0}}).status());
  ASSERT_OK(Push(b, "hist", 20, {{"val_loss", 1.0}}).status());
  auto alias = client_->SetAlias("hist", "prod", "1");
  ASSERT_TRUE(alias.ok()) << alias.status();
  EXPECT_EQ(alias->version(), 1u);
  ExpectPullEquals("hist", "prod", a, 1);
  auto points = client_->GetMetricHistory("hist", "val_loss");
  ASSERT_TRUE(points.ok()) << points.status();
  ASSERT_EQ(points->size(), 2u);
  EXPECT_EQ((*points)[1].value(), 1.0);
  auto pinned = client_->Pin("hist", "prod");
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_TRUE(pinned->pinned());
  ASSERT_OK(client_->DeleteAlias("hist", "prod"));
  EXPECT_EQ(
      client_->GetVersion("hist", "prod", GetVersionOptions()).status().code(),
      absl::StatusCode::kNotFound);
}

// The [begin, end) data offsets of tensor `name` in a safetensors header.
std::pair<uint64_t, uint64_t> DataOffsets(const std::string& header,
                                          const std::string& name) {
  const size_t at = header.find("\"" + name + "\":");
  if (at == std::string::npos) return {0, 0};
  const size_t offsets = header.find("\"data_offsets\":[", at);
  if (offsets == std::string::npos) return {0, 0};
  const char* p = header.c_str() + offsets + std::strlen("\"data_offsets\":[");
  char* end = nullptr;
  const uint64_t begin = std::strtoull(p, &end, 10);
  return {begin, std::strtoull(end + 1, nullptr, 10)};
}

TEST_F(ClientTest, ExportSafetensorsStreamsAValidFile) {
  std::mt19937_64 rng(13);
  StateBuilder s;
  s.Container({}, v1::ContainerInfo::DICT);
  s.RandomTensor({"a"}, v1::FLOAT32, {2, 3}, rng);
  s.Container({"b"}, v1::ContainerInfo::DICT);
  s.RandomTensor({"b", "c"}, v1::BFLOAT16, {1024, 1024}, rng);
  s.RandomTensor({"d"}, v1::INT64, {3}, rng);
  ASSERT_OK(Push(s, "export", 1).status());

  std::string file;
  uint64_t total = 0;
  ASSERT_OK(client_->ExportSafetensors(
      "export", "last", 0, {},
      [&](std::string_view piece, uint64_t t) -> absl::Status {
        file.append(piece.data(), piece.size());
        total = t;
        return absl::OkStatus();
      }));
  ASSERT_EQ(file.size(), total);
  ASSERT_GT(file.size(), 8u);
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);  // little-endian host
  ASSERT_LE(8 + n, file.size());
  const std::string header = file.substr(8, n);
  const std::string data = file.substr(8 + n);
  EXPECT_EQ(header.front(), '{') << header;
  const struct {
    const char* name;
    size_t entry;
  } tensors[] = {{"a", 1}, {"b.c", 3}, {"d", 4}};
  for (const auto& t : tensors) {
    auto [begin, end] = DataOffsets(header, t.name);
    ASSERT_LE(begin, end) << t.name;
    ASSERT_LE(end, data.size()) << t.name;
    EXPECT_TRUE(data.substr(begin, end - begin) == s.TensorBytes(t.entry))
        << t.name;
  }

  // A sink error stops the stream and comes back unchanged.
  absl::Status stopped = client_->ExportSafetensors(
      "export", "1", 0, {}, [](std::string_view, uint64_t) {
        return absl::AbortedError("sink full");
      });
  EXPECT_EQ(stopped, absl::AbortedError("sink full"));
}

TEST_F(ClientTest, WatchRefReportsMoves) {
  StateBuilder a = MakeState(41), b = MakeState(42);
  ASSERT_OK(Push(a, "watched", 1).status());
  std::atomic<int> events{0};
  std::vector<uint64_t> seen;
  absl::Status watch_status;
  std::thread watcher([&] {
    watch_status =
        client_->WatchRef("watched", "last", [&](const VersionInfo& v) {
          seen.push_back(v.version());
          ++events;
          return v.version() < 2;
        });
  });
  auto wait_for = [&](int n) {
    for (int i = 0; i < 1000 && events.load() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return events.load() >= n;
  };
  const bool first = wait_for(1);
  if (first) ASSERT_OK(Push(b, "watched", 2).status());
  const bool second = first && wait_for(2);
  if (!second) server_->Kill();  // ends the stream so the thread returns
  watcher.join();
  ASSERT_TRUE(first) << "no event for the current target";
  ASSERT_TRUE(second) << "no event after `last` moved";
  EXPECT_OK_STATUS(watch_status);
  EXPECT_EQ(seen, (std::vector<uint64_t>{1, 2}));
}

TEST_F(ClientTest, PushResumesAcrossAServerCrash) {
  std::mt19937_64 rng(77);
  StateBuilder s;
  s.Container({}, v1::ContainerInfo::DICT);
  for (int64_t i = 0; i < 12; ++i) {
    s.RandomTensor({absl::StrCat("w", i)}, v1::FLOAT32, {1024 * 1024}, rng);
  }
  // At 17 MiB of 48 (1 MiB chunks of 4 MiB blobs) some blob is half sent.
  // That progress report holds the upload (every stream reports through
  // the same callback) until the server has been killed. Progress going
  // backwards afterwards shows a stream resumed via QueryUpload.
  std::atomic<bool> crash{false}, killed{false};
  bool went_back = false;
  uint64_t previous = 0;
  PushOptions options;
  options.max_attempts = 12;
  options.chunk_size = 1 << 20;
  options.progress = [&](uint64_t done, uint64_t total) {
    went_back |= done < previous;
    previous = done;
    if (done >= uint64_t{17 * kMiB} && !crash.exchange(true)) {
      while (!killed.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  };
  absl::StatusOr<VersionInfo> result;
  std::thread pusher([&] {
    result = Push(s, "crashy", 1, {}, options);
    crash = true;  // also when it failed before reaching a third
  });
  while (!crash.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  server_->Kill();
  killed = true;
  absl::Status restarted = server_->Start();
  pusher.join();
  ASSERT_OK(restarted);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->state(), v1::COMMITTED);
  EXPECT_TRUE(went_back) << "no stream was resumed";
  ExpectPullEquals("crashy", "1", s, 1);
}

TEST_F(ClientTest, CudaTensorWithoutDeviceIsFailedPrecondition) {
  if (CudaAvailable()) {
    GTEST_SKIP() << "a CUDA device is present; the no-device path cannot be "
                    "exercised here";
  }
  StateBuilder s = MakeState(4);
  PushRequest req = s.Request("gpu-less", 1);
  req.entries[2].tensor.memory = Memory{MemoryKind::kCuda, 0};
  auto info = client_->Push(req, PushOptions());
  ASSERT_EQ(info.status().code(), absl::StatusCode::kFailedPrecondition)
      << info.status();
  const std::string message(info.status().message());
  EXPECT_TRUE(message.find("no CUDA device") != std::string::npos ||
              message.find("built without CUDA") != std::string::npos)
      << message;
  EXPECT_EQ(VersionCount("gpu-less"), 0u);

  ASSERT_OK(Push(s, "gpu-less", 1).status());
  auto v = client_->GetVersion("gpu-less", "1", GetVersionOptions());
  ASSERT_TRUE(v.ok()) << v.status();
  std::string buf(s.entries()[2].tensor.byte_length, '\0');
  TensorDestination d;
  d.entry = 2;
  d.data = buf.data();
  d.memory = Memory{MemoryKind::kCuda, 0};
  EXPECT_EQ(client_->ReadTensors(*v, {d}, PullOptions()).code(),
            absl::StatusCode::kFailedPrecondition);
}

// The CUDA runtime, loaded at run time so this test needs no CUDA headers.
struct CudaRuntime {
  int (*malloc)(void**, size_t) = nullptr;
  int (*free)(void*) = nullptr;
  int (*memcpy)(void*, const void*, size_t, int) = nullptr;
  static constexpr int kHostToDevice = 1;
  static constexpr int kDeviceToHost = 2;

  bool Load() {
    for (const char* lib :
         {"libcudart.so", "libcudart.so.13", "libcudart.so.12"}) {
      void* h = ::dlopen(lib, RTLD_NOW | RTLD_LOCAL);
      if (h == nullptr) continue;
      malloc = reinterpret_cast<decltype(malloc)>(::dlsym(h, "cudaMalloc"));
      free = reinterpret_cast<decltype(free)>(::dlsym(h, "cudaFree"));
      memcpy = reinterpret_cast<decltype(memcpy)>(::dlsym(h, "cudaMemcpy"));
      return malloc && free && memcpy;
    }
    return false;
  }
};

TEST_F(ClientTest, CudaTensorsRoundTripThroughStaging) {
  if (!CudaAvailable()) {
    GTEST_SKIP() << "no CUDA device on this machine (or built without "
                    "CUDA): the staged device path needs a GPU";
  }
  CudaRuntime cuda;
  if (!cuda.Load()) GTEST_SKIP() << "libcudart.so could not be loaded";
  StateBuilder s = MakeState(9);
  PushRequest req = s.Request("gpu", 1);
  std::vector<void*> device;
  for (size_t i = 0; i < req.entries.size(); ++i) {
    PushEntry& e = req.entries[i];
    if (!e.entry.has_tensor() || e.tensor.byte_length == 0) continue;
    void* p = nullptr;
    ASSERT_EQ(cuda.malloc(&p, e.tensor.byte_length), 0);
    ASSERT_EQ(cuda.memcpy(p, e.tensor.data, e.tensor.byte_length,
                          CudaRuntime::kHostToDevice),
              0);
    device.push_back(p);
    e.tensor.data = p;
    e.tensor.memory = Memory{MemoryKind::kCuda, 0};
  }
  auto info = client_->Push(req, PushOptions());
  ASSERT_TRUE(info.ok()) << info.status();
  ExpectPullEquals("gpu", "1", s, 1);

  // Pull into device buffers and compare on the host.
  auto v = client_->GetVersion("gpu", "1", GetVersionOptions());
  ASSERT_TRUE(v.ok()) << v.status();
  std::vector<TensorDestination> dests;
  std::vector<void*> out;
  for (size_t i = 0; i < s.entries().size(); ++i) {
    const PushEntry& e = s.entries()[i];
    if (!e.entry.has_tensor() || e.tensor.byte_length == 0) continue;
    void* p = nullptr;
    ASSERT_EQ(cuda.malloc(&p, e.tensor.byte_length), 0);
    out.push_back(p);
    TensorDestination d;
    d.entry = i;
    d.data = p;
    d.memory = Memory{MemoryKind::kCuda, 0};
    dests.push_back(d);
  }
  ASSERT_OK(client_->ReadTensors(*v, dests, PullOptions()));
  for (size_t k = 0; k < dests.size(); ++k) {
    std::string host(s.entries()[dests[k].entry].tensor.byte_length, '\0');
    ASSERT_EQ(cuda.memcpy(host.data(), out[k], host.size(),
                          CudaRuntime::kDeviceToHost),
              0);
    EXPECT_TRUE(host == s.TensorBytes(dests[k].entry))
        << "entry " << dests[k].entry;
  }
  for (void* p : device) cuda.free(p);
  for (void* p : out) cuda.free(p);
}

}  // namespace
}  // namespace ckptd
