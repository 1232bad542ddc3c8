// Names for KV blocks: a block of 64 tokens is named by a chained hash of its tokens and the name of
// the block before it (the first block's "before" is the model's identity), so two requests share a
// block exactly when they share every token up to its end, on the same model and numerics.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace epserve::kvcache {

using BlockHash = uint64_t;

// A fast 64-bit hash of bytes (8 bytes per round, murmur-style finalizer); also the disk checksum.
uint64_t hash_bytes(const void* data, size_t n, uint64_t seed = 0);

// hashes[i] names the block of tokens [64 i, 64 i + 64), for every full block of `tokens` from
// `first_block` on; `previous` is the name of block first_block - 1 (the model id for block 0).
void extend_chain(std::vector<BlockHash>& hashes, uint64_t model_id, std::span<const int> tokens, int block_tokens);

// The identity of a checkpoint as served: config.json, the tensor files' names, sizes and sampled
// bytes, and the cache's element type. Blocks from another model or numerics never match.
uint64_t model_identity(const std::filesystem::path& model_dir, const std::string& kv_dtype);

std::string hash_hex(BlockHash h);

}  // namespace epserve::kvcache
