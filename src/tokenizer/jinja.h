// The subset of Jinja2 that chat templates use, parsed once into a tree and rendered with the
// same settings transformers uses (trim_blocks and lstrip_blocks on, Python's value semantics):
// text, {{ expr }}, {% if/elif/else %}, {% for x in xs %} (with loop.*), {% set x = e %},
// {% set ns.attr = e %}, namespace(), comments and whitespace control ({%- -%}).
// Expressions: literals, names, .attr, [item], calls of a few builtins and string methods,
// not/and/or, comparisons, in, is-tests, + - * / % ~, filters, and `a if c else b`.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace epserve::tokenizer::jinja {

struct Value;
using List = std::vector<Value>;
using Dict = std::map<std::string, Value>;

// A template value. Lists and dicts are shared, as Python objects are (namespace() relies on it).
struct Value {
  enum class Type { Undefined, None, Bool, Int, String, List, Dict };
  Type type = Type::Undefined;
  bool b = false;
  int64_t i = 0;
  std::string s;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;

  Value() = default;
  static Value none() { Value v; v.type = Type::None; return v; }
  Value(bool x) : type(Type::Bool), b(x) {}
  Value(int64_t x) : type(Type::Int), i(x) {}
  Value(int x) : type(Type::Int), i(x) {}
  Value(std::string x) : type(Type::String), s(std::move(x)) {}
  Value(const char* x) : type(Type::String), s(x) {}
  Value(List x) : type(Type::List), list(std::make_shared<List>(std::move(x))) {}
  Value(Dict x) : type(Type::Dict), dict(std::make_shared<Dict>(std::move(x))) {}
};

struct Node;

class Template {
 public:
  // Throws epserve::Error (prefixed with `where`) on syntax errors or unsupported tags.
  static Template parse(std::string_view source, const std::string& where);
  // Throws epserve::Error on runtime errors (type errors, raise_exception()).
  std::string render(const Dict& context) const;

 private:
  std::shared_ptr<const std::vector<Node>> body_;
  std::string where_;
};

}  // namespace epserve::tokenizer::jinja
