// Bad checkpoints stop `epserve run` with one message naming the file, tensor or field.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/checkpoint_layout.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "support/paths.h"

using namespace epserve;
namespace fs = std::filesystem;
using epserve::testing::run_command;

namespace {

class CheckpointErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = epserve::testing::scratch_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    const auto r = run_command(epserve::testing::epserve_binary().string() +
                               " gen-model --preset tiny --no-mtp --no-tokenizer --shard-mb 40 --seed 3 --out " + dir_.string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  epserve::testing::CommandResult run() {
    return run_command(epserve::testing::epserve_binary().string() + " run --model " + dir_.string() +
                       " --tokens 1,2 --max-tokens 1");
  }
  nlohmann::json read_json(const fs::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
  }
  void write_json(const fs::path& p, const nlohmann::json& j) { std::ofstream(p) << j.dump(1); }
  fs::path shard_of(const std::string& tensor) {
    return dir_ / read_json(dir_ / "model.safetensors.index.json")["weight_map"][tensor].get<std::string>();
  }
  void expect_error(const std::vector<std::string>& needles) {
    const auto r = run();
    EXPECT_EQ(r.exit_code, 1) << r.output;
    for (const auto& n : needles) EXPECT_NE(r.output.find(n), std::string::npos) << "missing \"" << n << "\" in: " << r.output;
    EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  }
  fs::path dir_;
};

TEST_F(CheckpointErrors, GoodCheckpointRuns) {
  const auto r = run();
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // Sharded as asked, with an index that names every tensor.
  const auto index = read_json(dir_ / "model.safetensors.index.json");
  int shards = 0;
  for (const auto& entry : fs::directory_iterator(dir_))
    if (entry.path().filename().string().starts_with("model-0000")) ++shards;
  EXPECT_GE(shards, 2);
  EXPECT_TRUE(index["weight_map"].contains("model.layers.1.mlp.experts.31.down_proj.weight_scale_inv"));
  // One model.safetensors without an index is accepted too, and gives the same tokens.
  const auto single = dir_ / "single";
  ASSERT_EQ(run_command(epserve::testing::epserve_binary().string() +
                        " gen-model --preset tiny --no-mtp --no-tokenizer --single-file --seed 3 --out " + single.string())
                .exit_code, 0);
  EXPECT_TRUE(fs::exists(single / "model.safetensors"));
  auto tokens_of = [&](const fs::path& dir) {
    const auto out = run_command(epserve::testing::epserve_binary().string() + " run --model " + dir.string() +
                                 " --tokens 1,2 --max-tokens 3 --ignore-eos --json 2>/dev/null");
    EXPECT_EQ(out.exit_code, 0) << out.output;
    return nlohmann::json::parse(out.output)["tokens"];
  };
  EXPECT_EQ(tokens_of(single), tokens_of(dir_));
}

TEST_F(CheckpointErrors, MissingTensor) {
  auto index = read_json(dir_ / "model.safetensors.index.json");
  index["weight_map"].erase("model.layers.2.self_attn.kv_b_proj.weight");
  write_json(dir_ / "model.safetensors.index.json", index);
  expect_error({"model.layers.2.self_attn.kv_b_proj.weight", "missing"});
}

TEST_F(CheckpointErrors, ShapeDisagreesWithConfig) {
  auto config = read_json(dir_ / "config.json");
  config["q_lora_rank"] = 48;
  write_json(dir_ / "config.json", config);
  expect_error({"model.layers.0.self_attn.q_a_proj.weight", "[64, 128]", "[48, 128]"});
}

TEST_F(CheckpointErrors, WrongDtype) {
  // Rewrite the shard holding the final norm with that tensor stored as F32 instead of BF16.
  const std::string name = "model.norm.weight";
  const auto path = shard_of(name);
  model::SafetensorsWriter writer;
  {
    model::SafetensorsFile file(path);
    for (const auto& [n, info] : file.tensors()) {
      auto bytes = file.data(info);
      if (n == name) {
        std::vector<uint8_t> f32(bytes.size() * 2, 0);
        writer.add(n, model::Dtype::F32, info.shape, f32);
      } else {
        writer.add(n, info.dtype, info.shape, std::vector<uint8_t>(bytes.begin(), bytes.end()));
      }
    }
  }
  writer.write(path);
  expect_error({path.string(), name, "dtype F32", "expected BF16"});
}

TEST_F(CheckpointErrors, TruncatedShard) {
  const auto path = shard_of("lm_head.weight");
  fs::resize_file(path, fs::file_size(path) / 2);
  expect_error({path.string(), "truncated"});
}

TEST_F(CheckpointErrors, BadHeader) {
  const auto path = shard_of("lm_head.weight");
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  const char garbage[12] = {8, 0, 0, 0, 0, 0, 0, 0, '{', 'x', 'x', 'x'};
  f.write(garbage, sizeof garbage);
  f.close();
  expect_error({path.string(), "bad header"});
}

TEST_F(CheckpointErrors, BadConfigField) {
  auto config = read_json(dir_ / "config.json");
  config["hidden_size"] = "wide";
  write_json(dir_ / "config.json", config);
  expect_error({"config.json", "hidden_size", "wrong type"});
  config.erase("hidden_size");
  write_json(dir_ / "config.json", config);
  expect_error({"config.json", "missing field \"hidden_size\""});
  config = read_json(dir_ / "config.json");
  config["hidden_size"] = 128;
  config["n_group"] = 5;  // 32 experts do not split into 5 groups
  write_json(dir_ / "config.json", config);
  expect_error({"config.json", "n_group"});
}

TEST_F(CheckpointErrors, MissingShardFile) {
  const auto path = shard_of("lm_head.weight");
  fs::remove(path);
  expect_error({path.filename().string(), "missing"});
}

TEST_F(CheckpointErrors, NotACheckpoint) {
  fs::remove(dir_ / "config.json");
  expect_error({"config.json", "cannot open"});
}

// The tensor table of the fact sheet (reference §3), independent of the generator: V3's shapes.
TEST(CheckpointLayout, MatchesDeepSeekV3Table) {
  const auto c = model::ModelConfig::preset("v3-671b");
  std::map<std::string, std::vector<int64_t>> shape;
  for (int l : {0, 3, 61})
    for (const auto& t : model::layer_tensors(c, l)) shape[t.name] = t.shape;
  EXPECT_EQ(shape["model.layers.0.self_attn.q_a_proj.weight"], (std::vector<int64_t>{1536, 7168}));
  EXPECT_EQ(shape["model.layers.0.self_attn.q_b_proj.weight"], (std::vector<int64_t>{24576, 1536}));
  EXPECT_EQ(shape["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"], (std::vector<int64_t>{576, 7168}));
  EXPECT_EQ(shape["model.layers.0.self_attn.kv_b_proj.weight"], (std::vector<int64_t>{32768, 512}));
  EXPECT_EQ(shape["model.layers.0.self_attn.o_proj.weight"], (std::vector<int64_t>{7168, 16384}));
  EXPECT_EQ(shape["model.layers.0.mlp.gate_proj.weight"], (std::vector<int64_t>{18432, 7168}));
  EXPECT_EQ(shape["model.layers.3.mlp.experts.255.down_proj.weight"], (std::vector<int64_t>{7168, 2048}));
  EXPECT_EQ(shape["model.layers.3.mlp.gate.weight"], (std::vector<int64_t>{256, 7168}));
  EXPECT_EQ(shape["model.layers.61.eh_proj.weight"], (std::vector<int64_t>{7168, 14336}));
  EXPECT_EQ(model::scale_shape({576, 7168}), (std::vector<int64_t>{5, 56}));
  EXPECT_EQ(model::scale_shape({32768, 512}), (std::vector<int64_t>{256, 4}));
  // Tensor count (reference §3: 91,991 with scales).
  size_t count = model::global_tensors(c).size();
  for (int l = 0; l <= 61; ++l)
    for (const auto& t : model::layer_tensors(c, l)) count += t.role == model::TensorRole::kFp8Linear ? 2 : 1;
  EXPECT_EQ(count, 91991u);
  // MLA cache per token (reference §2): 61 × 576 × 2 = 70,272 bytes.
  EXPECT_EQ(c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 2, 70272);
  // Softmax scale (reference §5): 0.13523378.
  EXPECT_NEAR(c.softmax_scale(), 0.13523378, 1e-7);
}

}  // namespace
