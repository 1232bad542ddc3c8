#include "tokenizer/jinja.h"

#include <algorithm>
#include <functional>

#include "base/error.h"

namespace epserve::tokenizer::jinja {

// ---------------------------------------------------------------------------------------------
// Syntax tree

struct Expr;
using ExprPtr = std::shared_ptr<const Expr>;

struct Expr {
  enum class Kind { Literal, Name, Attr, Item, Call, Not, Neg, Binary, Test, Filter, Cond, ListLit, DictLit };
  Kind kind = Kind::Literal;
  Value literal;
  std::string name;  // Name, Attr, Binary operator, Test, Filter
  bool negated = false;  // `is not`
  std::vector<ExprPtr> args;  // operands / positional arguments (args[0] is the object for Attr etc.)
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node {
  enum class Kind { Text, Output, If, For, Set };
  Kind kind = Kind::Text;
  std::string text;
  ExprPtr expr;  // Output value, For iterable, Set value
  std::vector<std::pair<ExprPtr, std::vector<Node>>> branches;  // If: (condition or null for else, body)
  std::string var, attr;  // For variable; Set target (attr non-empty for ns.attr)
  std::vector<Node> body;
};

namespace {

// ---------------------------------------------------------------------------------------------
// Splitting the source into text and tags, with Jinja2's whitespace rules

struct Chunk {
  enum class Kind { Text, Output, Block } kind;
  std::string content;
  size_t offset;  // in the source, for error messages
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::vector<Chunk> split_source(std::string_view src, const std::string& where) {
  std::vector<Chunk> chunks;
  size_t pos = 0;
  bool strip_next = false;  // the previous tag ended with '-'
  bool trim_newline = false;  // the previous tag was a block or comment (trim_blocks)
  while (pos <= src.size()) {
    size_t open = src.find('{', pos);
    while (open != std::string_view::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
           src[open + 1] != '#')
      open = src.find('{', open + 1);
    if (open != std::string_view::npos && open + 1 >= src.size()) open = std::string_view::npos;
    std::string text(src.substr(pos, open == std::string_view::npos ? std::string_view::npos : open - pos));
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && is_space(text[k])) ++k;
      text.erase(0, k);
    } else if (trim_newline) {
      if (text.rfind("\r\n", 0) == 0) text.erase(0, 2);
      else if (!text.empty() && text[0] == '\n') text.erase(0, 1);
    }
    if (open == std::string_view::npos) {
      if (!text.empty()) chunks.push_back({Chunk::Kind::Text, text, pos});
      break;
    }
    const char type = src[open + 1];
    const char mod = open + 2 < src.size() ? src[open + 2] : '\0';
    if (mod == '-') {
      while (!text.empty() && is_space(text.back())) text.pop_back();
    } else if (type != '{' && mod != '+') {
      // lstrip_blocks: spaces and tabs between the start of a source line and a block or comment
      // tag go (judged on the source, as Jinja2's lexer does).
      size_t j = open;
      while (j > pos && (src[j - 1] == ' ' || src[j - 1] == '\t')) --j;
      if (j == 0 || src[j - 1] == '\n') {
        size_t k = open - j;
        while (k > 0 && !text.empty() && (text.back() == ' ' || text.back() == '\t')) text.pop_back(), --k;
      }
    }
    if (!text.empty()) chunks.push_back({Chunk::Kind::Text, text, pos});

    const std::string_view close = type == '{' ? "}}" : type == '%' ? "%}" : "#}";
    size_t body = open + 2 + ((mod == '-' || mod == '+') ? 1 : 0);
    size_t end;
    if (type == '#') {
      end = src.find(close, body);
    } else {
      // Find the closing delimiter outside string literals.
      end = std::string_view::npos;
      char quote = 0;
      for (size_t k = body; k + 1 < src.size(); ++k) {
        if (quote) {
          if (src[k] == '\\') ++k;
          else if (src[k] == quote) quote = 0;
        } else if (src[k] == '\'' || src[k] == '"') {
          quote = src[k];
        } else if (src[k] == close[0] && src[k + 1] == close[1]) {
          end = k;
          break;
        }
      }
    }
    if (end == std::string_view::npos)
      throw Error(where + ": unclosed '{" + std::string(1, type) + "' at offset " + std::to_string(open));
    size_t inner_end = end;
    strip_next = end > body && src[end - 1] == '-';
    if (strip_next) --inner_end;
    trim_newline = type != '{';
    if (type != '#')
      chunks.push_back({type == '{' ? Chunk::Kind::Output : Chunk::Kind::Block,
                        std::string(src.substr(body, inner_end - body)), open});
    pos = end + 2;
    if (pos > src.size()) break;
  }
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// Expression tokens

struct Tok {
  enum class Kind { Name, String, Int, Op, End } kind;
  std::string text;
  int64_t number = 0;
};

std::vector<Tok> lex(std::string_view s, const std::string& where) {
  std::vector<Tok> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (is_space(c)) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t k = i;
      while (k < s.size() && (std::isalnum(static_cast<unsigned char>(s[k])) || s[k] == '_')) ++k;
      out.push_back({Tok::Kind::Name, std::string(s.substr(i, k - i))});
      i = k;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t k = i;
      while (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) ++k;
      Tok t{Tok::Kind::Int, std::string(s.substr(i, k - i))};
      t.number = std::stoll(t.text);
      out.push_back(t);
      i = k;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t k = i + 1;
      for (; k < s.size() && s[k] != c; ++k) {
        if (s[k] == '\\' && k + 1 < s.size()) {
          const char e = s[++k];
          switch (e) {
            case 'n': v += '\n'; break;
            case 't': v += '\t'; break;
            case 'r': v += '\r'; break;
            case '\\': v += '\\'; break;
            case '\'': v += '\''; break;
            case '"': v += '"'; break;
            default: v += '\\'; v += e;
          }
        } else {
          v += s[k];
        }
      }
      if (k >= s.size()) throw Error(where + ": unterminated string literal in template");
      out.push_back({Tok::Kind::String, v});
      i = k + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : two)
        if (s.substr(i, 2) == t) op = t;
      if (std::string_view("()[]{}.,:|~+-*/%<>=!").find(c) == std::string_view::npos)
        throw Error(where + ": unexpected character '" + std::string(1, c) + "' in template expression");
      out.push_back({Tok::Kind::Op, op});
      i += op.size();
    }
  }
  out.push_back({Tok::Kind::End, ""});
  return out;
}

// ---------------------------------------------------------------------------------------------
// Expression parser (Jinja2's precedence: or < and < not < comparisons < + - < ~ < * / % < unary
// < postfix/filters/tests)

class ExprParser {
 public:
  ExprParser(std::vector<Tok> toks, const std::string& where) : t_(std::move(toks)), where_(where) {}

  ExprPtr expression() {
    auto e = or_expr();
    if (is_name("if")) {
      ++p_;
      auto cond = or_expr();
      ExprPtr other;
      if (is_name("else")) {
        ++p_;
        other = expression();
      } else {
        other = literal(Value());
      }
      return make(Expr::Kind::Cond, "", {cond, e, other});
    }
    return e;
  }
  bool at_end() const { return t_[p_].kind == Tok::Kind::End; }
  bool is_name(const char* n) const { return t_[p_].kind == Tok::Kind::Name && t_[p_].text == n; }
  bool is_op(const char* o) const { return t_[p_].kind == Tok::Kind::Op && t_[p_].text == o; }
  std::string name() {
    if (t_[p_].kind != Tok::Kind::Name) fail("expected a name");
    return t_[p_++].text;
  }
  void expect_op(const char* o) {
    if (!is_op(o)) fail(std::string("expected '") + o + "'");
    ++p_;
  }
  void expect_end() {
    if (!at_end()) fail("unexpected '" + t_[p_].text + "'");
  }
  [[noreturn]] void fail(const std::string& msg) const {
    throw Error(where_ + ": template syntax error: " + msg +
                (t_[p_].kind == Tok::Kind::End ? " at end of tag" : " near '" + t_[p_].text + "'"));
  }

 private:
  static ExprPtr make(Expr::Kind k, std::string name, std::vector<ExprPtr> args) {
    auto e = std::make_shared<Expr>();
    e->kind = k;
    e->name = std::move(name);
    e->args = std::move(args);
    return e;
  }
  static ExprPtr literal(Value v) {
    auto e = std::make_shared<Expr>();
    e->literal = std::move(v);
    return e;
  }
  ExprPtr or_expr() {
    auto e = and_expr();
    while (is_name("or")) ++p_, e = make(Expr::Kind::Binary, "or", {e, and_expr()});
    return e;
  }
  ExprPtr and_expr() {
    auto e = not_expr();
    while (is_name("and")) ++p_, e = make(Expr::Kind::Binary, "and", {e, not_expr()});
    return e;
  }
  ExprPtr not_expr() {
    if (is_name("not")) {
      ++p_;
      return make(Expr::Kind::Not, "", {not_expr()});
    }
    return compare();
  }
  ExprPtr compare() {
    auto e = math1();
    while (true) {
      std::string op;
      if (is_op("==") || is_op("!=") || is_op("<") || is_op(">") || is_op("<=") || is_op(">=")) {
        op = t_[p_++].text;
      } else if (is_name("in")) {
        ++p_;
        op = "in";
      } else if (is_name("not") && t_[p_ + 1].kind == Tok::Kind::Name && t_[p_ + 1].text == "in") {
        p_ += 2;
        op = "not in";
      } else {
        return e;
      }
      e = make(Expr::Kind::Binary, op, {e, math1()});
    }
  }
  ExprPtr math1() {
    auto e = concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = t_[p_++].text;
      e = make(Expr::Kind::Binary, op, {e, concat()});
    }
    return e;
  }
  ExprPtr concat() {
    auto e = math2();
    while (is_op("~")) ++p_, e = make(Expr::Kind::Binary, "~", {e, math2()});
    return e;
  }
  ExprPtr math2() {
    auto e = unary();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = t_[p_++].text;
      e = make(Expr::Kind::Binary, op, {e, unary()});
    }
    return e;
  }
  ExprPtr unary() {
    if (is_op("-")) {
      ++p_;
      return make(Expr::Kind::Neg, "", {unary()});
    }
    if (is_op("+")) {
      ++p_;
      return unary();
    }
    auto e = postfix(primary());
    // Filters and tests bind to the unary operand, as in Jinja2 (`a + b is none` tests b).
    while (true) {
      if (is_op("|")) {
        ++p_;
        auto f = std::make_shared<Expr>();
        f->kind = Expr::Kind::Filter;
        f->name = name();
        f->args.push_back(e);
        if (is_op("(")) call_args(*f);
        e = postfix(f);
      } else if (is_name("is")) {
        ++p_;
        auto tst = std::make_shared<Expr>();
        tst->kind = Expr::Kind::Test;
        if (is_name("not")) ++p_, tst->negated = true;
        tst->name = t_[p_].kind == Tok::Kind::Name ? t_[p_++].text : (fail("expected a test name"), "");
        tst->args.push_back(e);
        if (is_op("(")) call_args(*tst);
        e = tst;
      } else {
        return e;
      }
    }
  }
  void call_args(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (t_[p_].kind == Tok::Kind::Name && t_[p_ + 1].kind == Tok::Kind::Op && t_[p_ + 1].text == "=") {
        std::string key = t_[p_].text;
        p_ += 2;
        call.kwargs.emplace_back(std::move(key), expression());
      } else {
        call.args.push_back(expression());
      }
      if (!is_op(",")) break;
      ++p_;
    }
    expect_op(")");
  }
  ExprPtr primary() {
    const Tok& t = t_[p_];
    if (t.kind == Tok::Kind::String) {
      std::string s = t_[p_++].text;
      while (t_[p_].kind == Tok::Kind::String) s += t_[p_++].text;  // adjacent literals concatenate
      return literal(Value(std::move(s)));
    }
    if (t.kind == Tok::Kind::Int) return ++p_, literal(Value(t.number));
    if (t.kind == Tok::Kind::Name) {
      ++p_;
      if (t.text == "true" || t.text == "True") return literal(Value(true));
      if (t.text == "false" || t.text == "False") return literal(Value(false));
      if (t.text == "none" || t.text == "None") return literal(Value::none());
      return make(Expr::Kind::Name, t.text, {});
    }
    if (is_op("(")) {
      ++p_;
      auto e = expression();
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      ++p_;
      auto e = std::make_shared<Expr>();
      e->kind = Expr::Kind::ListLit;
      while (!is_op("]")) {
        e->args.push_back(expression());
        if (!is_op(",")) break;
        ++p_;
      }
      expect_op("]");
      return e;
    }
    if (is_op("{")) {
      ++p_;
      auto e = std::make_shared<Expr>();
      e->kind = Expr::Kind::DictLit;
      while (!is_op("}")) {
        e->args.push_back(expression());
        expect_op(":");
        e->args.push_back(expression());
        if (!is_op(",")) break;
        ++p_;
      }
      expect_op("}");
      return e;
    }
    fail("unexpected token");
  }
  ExprPtr postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        ++p_;
        e = make(Expr::Kind::Attr, name(), {e});
      } else if (is_op("[")) {
        ++p_;
        auto index = expression();
        expect_op("]");
        e = make(Expr::Kind::Item, "", {e, index});
      } else if (is_op("(")) {
        auto call = std::make_shared<Expr>();
        call->kind = Expr::Kind::Call;
        call->args.push_back(e);
        call_args(*call);
        e = call;
      } else {
        return e;
      }
    }
  }

  std::vector<Tok> t_;
  size_t p_ = 0;
  std::string where_;
};

// ---------------------------------------------------------------------------------------------
// Statement parser

class Parser {
 public:
  Parser(std::vector<Chunk> chunks, std::string where) : c_(std::move(chunks)), where_(std::move(where)) {}

  std::vector<Node> parse_all() {
    std::string stop;
    auto body = parse_until({}, stop);
    return body;
  }

 private:
  // Parses nodes until a block tag whose keyword is in `stops`; returns them and sets `stop` to
  // that keyword, leaving the tag's parser in `stop_parser_`.
  std::vector<Node> parse_until(const std::vector<std::string>& stops, std::string& stop) {
    std::vector<Node> nodes;
    while (i_ < c_.size()) {
      const Chunk& ch = c_[i_++];
      if (ch.kind == Chunk::Kind::Text) {
        Node n;
        n.text = ch.content;
        nodes.push_back(std::move(n));
        continue;
      }
      ExprParser p(lex(ch.content, where_), where_);
      if (ch.kind == Chunk::Kind::Output) {
        Node n;
        n.kind = Node::Kind::Output;
        n.expr = p.expression();
        p.expect_end();
        nodes.push_back(std::move(n));
        continue;
      }
      const std::string kw = p.name();
      if (std::find(stops.begin(), stops.end(), kw) != stops.end()) {
        stop = kw;
        stop_parser_ = std::make_unique<ExprParser>(std::move(p));
        return nodes;
      }
      if (kw == "if") {
        Node n;
        n.kind = Node::Kind::If;
        ExprPtr cond = p.expression();
        p.expect_end();
        while (true) {
          std::string s;
          auto body = parse_until({"elif", "else", "endif"}, s);
          if (s.empty()) fail(ch, "{% if %} without {% endif %}");
          n.branches.emplace_back(cond, std::move(body));
          if (s == "endif") {
            stop_parser_->expect_end();
            break;
          }
          if (s == "else") {
            stop_parser_->expect_end();
            std::string s2;
            auto else_body = parse_until({"endif"}, s2);
            if (s2.empty()) fail(ch, "{% if %} without {% endif %}");
            stop_parser_->expect_end();
            n.branches.emplace_back(nullptr, std::move(else_body));
            break;
          }
          cond = stop_parser_->expression();  // elif
          stop_parser_->expect_end();
        }
        nodes.push_back(std::move(n));
      } else if (kw == "for") {
        Node n;
        n.kind = Node::Kind::For;
        n.var = p.name();
        if (!p.is_name("in")) p.fail("expected 'in'");
        p.name();
        n.expr = p.expression();
        p.expect_end();
        std::string s;
        n.body = parse_until({"endfor", "else"}, s);
        if (s != "endfor") fail(ch, s.empty() ? "{% for %} without {% endfor %}" : "{% for %}...{% else %} is not supported");
        stop_parser_->expect_end();
        nodes.push_back(std::move(n));
      } else if (kw == "set") {
        Node n;
        n.kind = Node::Kind::Set;
        n.var = p.name();
        if (p.is_op(".")) {
          p.expect_op(".");
          n.attr = p.name();
        }
        if (!p.is_op("=")) p.fail("block {% set %}...{% endset %} is not supported; expected '='");
        p.expect_op("=");
        n.expr = p.expression();
        p.expect_end();
        nodes.push_back(std::move(n));
      } else {
        fail(ch, "unsupported or unexpected tag '" + kw + "'");
      }
    }
    stop.clear();
    return nodes;
  }
  [[noreturn]] void fail(const Chunk& ch, const std::string& msg) {
    throw Error(where_ + ": template error at offset " + std::to_string(ch.offset) + ": " + msg);
  }

  std::vector<Chunk> c_;
  size_t i_ = 0;
  std::string where_;
  std::unique_ptr<ExprParser> stop_parser_;
};

// ---------------------------------------------------------------------------------------------
// Evaluation

const char* type_name(const Value& v) {
  switch (v.type) {
    case Value::Type::Undefined: return "undefined";
    case Value::Type::None: return "none";
    case Value::Type::Bool: return "bool";
    case Value::Type::Int: return "int";
    case Value::Type::String: return "string";
    case Value::Type::List: return "list";
    case Value::Type::Dict: return "dict";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Value::Type::Undefined:
    case Value::Type::None: return false;
    case Value::Type::Bool: return v.b;
    case Value::Type::Int: return v.i != 0;
    case Value::Type::String: return !v.s.empty();
    case Value::Type::List: return !v.list->empty();
    case Value::Type::Dict: return !v.dict->empty();
  }
  return false;
}

std::string py_repr(const Value& v);

// How Python's str() (and so Jinja2's output) shows a value.
std::string to_text(const Value& v) {
  switch (v.type) {
    case Value::Type::Undefined: return "";
    case Value::Type::None: return "None";
    case Value::Type::Bool: return v.b ? "True" : "False";
    case Value::Type::Int: return std::to_string(v.i);
    case Value::Type::String: return v.s;
    default: return py_repr(v);
  }
}

std::string py_repr(const Value& v) {
  if (v.type == Value::Type::String) {
    std::string out = "'";
    for (char c : v.s) {
      if (c == '\'' || c == '\\') out += '\\';
      if (c == '\n') out += "\\n";
      else out += c;
    }
    return out + "'";
  }
  if (v.type == Value::Type::List) {
    std::string out = "[";
    for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + py_repr((*v.list)[k]);
    return out + "]";
  }
  if (v.type == Value::Type::Dict) {
    std::string out = "{";
    bool first = true;
    for (const auto& [key, val] : *v.dict) out += (first ? "" : ", ") + py_repr(Value(key)) + ": " + py_repr(val), first = false;
    return out + "}";
  }
  return to_text(v);
}

bool equal(const Value& a, const Value& b) {
  using T = Value::Type;
  const bool an = a.type == T::Int || a.type == T::Bool, bn = b.type == T::Int || b.type == T::Bool;
  if (an && bn) return (a.type == T::Int ? a.i : a.b) == (b.type == T::Int ? b.i : b.b);
  if (a.type != b.type) return false;
  switch (a.type) {
    case T::Undefined:
    case T::None: return true;
    case T::String: return a.s == b.s;
    case T::List:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case T::Dict: {
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [key, val] : *a.dict) {
        auto it = b.dict->find(key);
        if (it == b.dict->end() || !equal(val, it->second)) return false;
      }
      return true;
    }
    default: return false;
  }
}

class Renderer {
 public:
  Renderer(const Dict& context, const std::string& where) : where_(where) { scopes_.push_back(context); }

  void run(const std::vector<Node>& nodes, std::string& out) {
    for (const Node& n : nodes) {
      switch (n.kind) {
        case Node::Kind::Text: out += n.text; break;
        case Node::Kind::Output: out += to_text(eval(*n.expr)); break;
        case Node::Kind::If:
          for (const auto& [cond, body] : n.branches) {
            if (!cond || truthy(eval(*cond))) {
              run(body, out);
              break;
            }
          }
          break;
        case Node::Kind::For: run_for(n, out); break;
        case Node::Kind::Set: {
          Value v = eval(*n.expr);
          if (n.attr.empty()) {
            scopes_.back()[n.var] = std::move(v);
          } else {
            Value target = lookup(n.var);
            if (target.type != Value::Type::Dict) fail("cannot set attribute '" + n.attr + "' of " + n.var + ", a " + type_name(target));
            (*target.dict)[n.attr] = std::move(v);
          }
          break;
        }
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& msg) const { throw Error(where_ + ": template: " + msg); }

  void run_for(const Node& n, std::string& out) {
    Value seq = eval(*n.expr);
    List items;
    if (seq.type == Value::Type::List) items = *seq.list;
    else if (seq.type == Value::Type::Dict) for (const auto& [k, v] : *seq.dict) items.emplace_back(k);
    else if (seq.type == Value::Type::String) for (char c : seq.s) items.emplace_back(std::string(1, c));
    else if (seq.type != Value::Type::Undefined) fail(std::string("cannot iterate over a ") + type_name(seq));
    const int64_t len = int64_t(items.size());
    for (int64_t k = 0; k < len; ++k) {
      // Each iteration is its own scope: a plain {% set %} inside does not outlive it (Jinja2).
      Dict scope;
      scope[n.var] = items[k];
      scope["loop"] = Value(Dict{{"index0", Value(k)}, {"index", Value(k + 1)}, {"first", Value(k == 0)},
                                 {"last", Value(k == len - 1)}, {"length", Value(len)},
                                 {"revindex", Value(len - k)}, {"revindex0", Value(len - k - 1)}});
      scopes_.push_back(std::move(scope));
      run(n.body, out);
      scopes_.pop_back();
    }
  }

  Value lookup(const std::string& name) const {
    for (size_t k = scopes_.size(); k-- > 0;)
      if (auto it = scopes_[k].find(name); it != scopes_[k].end()) return it->second;
    return Value();
  }

  Value get_item(const Value& obj, const Value& key, const std::string& shown) {
    if (obj.type == Value::Type::Undefined) fail("'" + shown + "' is undefined");
    if (obj.type == Value::Type::Dict) {
      if (key.type != Value::Type::String) return Value();
      auto it = obj.dict->find(key.s);
      return it == obj.dict->end() ? Value() : it->second;
    }
    if ((obj.type == Value::Type::List || obj.type == Value::Type::String) && key.type == Value::Type::Int) {
      const int64_t n = obj.type == Value::Type::List ? int64_t(obj.list->size()) : int64_t(obj.s.size());
      int64_t k = key.i < 0 ? key.i + n : key.i;
      if (k < 0 || k >= n) return Value();
      return obj.type == Value::Type::List ? (*obj.list)[k] : Value(std::string(1, obj.s[k]));
    }
    return Value();
  }

  static std::string strip(const std::string& s, bool left, bool right, const std::string& chars) {
    auto in = [&](char c) { return chars.empty() ? is_space(c) : chars.find(c) != std::string::npos; };
    size_t b = 0, e = s.size();
    if (left) while (b < e && in(s[b])) ++b;
    if (right) while (e > b && in(s[e - 1])) --e;
    return s.substr(b, e - b);
  }

  Value call(const Expr& e) {
    std::vector<Value> args;
    for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
    const Expr& callee = *e.args[0];
    if (callee.kind == Expr::Kind::Name) {
      if (callee.name == "namespace") {
        Dict d;
        for (const auto& [key, val] : e.kwargs) d[key] = eval(*val);
        return Value(std::move(d));
      }
      if (callee.name == "raise_exception") fail(args.empty() ? "raise_exception()" : to_text(args[0]));
      if (callee.name == "range") {
        int64_t lo = 0, hi = 0;
        if (args.size() == 1 && args[0].type == Value::Type::Int) hi = args[0].i;
        else if (args.size() == 2 && args[0].type == Value::Type::Int && args[1].type == Value::Type::Int) lo = args[0].i, hi = args[1].i;
        else fail("range() takes one or two integers");
        List l;
        for (int64_t k = lo; k < hi; ++k) l.emplace_back(k);
        return Value(std::move(l));
      }
      fail("unknown function '" + callee.name + "'");
    }
    if (callee.kind == Expr::Kind::Attr) {
      const Value obj = eval(*callee.args[0]);
      const std::string& m = callee.name;
      auto str_arg = [&](size_t k) -> std::string {
        if (args.size() <= k) return "";
        if (args[k].type != Value::Type::String) fail(m + "() expects a string argument");
        return args[k].s;
      };
      if (obj.type == Value::Type::String) {
        if (m == "strip") return Value(strip(obj.s, true, true, str_arg(0)));
        if (m == "lstrip") return Value(strip(obj.s, true, false, str_arg(0)));
        if (m == "rstrip") return Value(strip(obj.s, false, true, str_arg(0)));
        if (m == "startswith") return Value(obj.s.rfind(str_arg(0), 0) == 0);
        if (m == "endswith") {
          const std::string x = str_arg(0);
          return Value(obj.s.size() >= x.size() && obj.s.compare(obj.s.size() - x.size(), x.size(), x) == 0);
        }
        if (m == "upper" || m == "lower") {
          std::string s = obj.s;
          for (char& c : s) c = m == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c));
          return Value(s);
        }
      }
      if (obj.type == Value::Type::Dict) {
        if (m == "get") {
          auto it = obj.dict->find(str_arg(0));
          return it != obj.dict->end() ? it->second : (args.size() > 1 ? args[1] : Value::none());
        }
        if (m == "items" || m == "keys" || m == "values") {
          List l;
          for (const auto& [k, v] : *obj.dict)
            l.push_back(m == "items" ? Value(List{Value(k), v}) : m == "keys" ? Value(k) : v);
          return Value(std::move(l));
        }
      }
      fail(std::string("no method '") + m + "' on a " + type_name(obj));
    }
    fail("this expression cannot be called");
  }

  Value filter(const Expr& e) {
    const Value v = eval(*e.args[0]);
    std::vector<Value> args;
    for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
    const std::string& f = e.name;
    if (f == "trim") return Value(strip(to_text(v), true, true, ""));
    if (f == "length" || f == "count") {
      if (v.type == Value::Type::String) return Value(int64_t(v.s.size()));
      if (v.type == Value::Type::List) return Value(int64_t(v.list->size()));
      if (v.type == Value::Type::Dict) return Value(int64_t(v.dict->size()));
      fail(std::string("length of a ") + type_name(v));
    }
    if (f == "string") return Value(to_text(v));
    if (f == "lower" || f == "upper") {
      std::string s = to_text(v);
      for (char& c : s) c = f == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c));
      return Value(s);
    }
    if (f == "default" || f == "d") {
      const bool use_default = v.type == Value::Type::Undefined || (args.size() > 1 && truthy(args[1]) && !truthy(v));
      return use_default ? (args.empty() ? Value("") : args[0]) : v;
    }
    if (f == "first" || f == "last") {
      if (v.type != Value::Type::List) fail(f + " of a " + type_name(v));
      if (v.list->empty()) return Value();
      return f == "first" ? v.list->front() : v.list->back();
    }
    if (f == "join") {
      if (v.type != Value::Type::List) fail(std::string("join of a ") + type_name(v));
      const std::string sep = args.empty() ? "" : to_text(args[0]);
      std::string out;
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? sep : "") + to_text((*v.list)[k]);
      return Value(out);
    }
    fail("unknown filter '" + f + "'");
  }

  bool test(const Expr& e) {
    const Value v = eval(*e.args[0]);
    const std::string& t = e.name;
    bool r;
    if (t == "defined") r = v.type != Value::Type::Undefined;
    else if (t == "undefined") r = v.type == Value::Type::Undefined;
    else if (t == "none") r = v.type == Value::Type::None;
    else if (t == "string") r = v.type == Value::Type::String;
    else if (t == "number" || t == "integer") r = v.type == Value::Type::Int;
    else if (t == "boolean") r = v.type == Value::Type::Bool;
    else if (t == "true") r = v.type == Value::Type::Bool && v.b;
    else if (t == "false") r = v.type == Value::Type::Bool && !v.b;
    else if (t == "mapping") r = v.type == Value::Type::Dict;
    else if (t == "sequence" || t == "iterable") r = v.type == Value::Type::List || v.type == Value::Type::String || (t == "iterable" && v.type == Value::Type::Dict);
    else fail("unknown test '" + t + "'");
    return e.negated ? !r : r;
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value a = eval(*e.args[0]);
      return truthy(a) ? eval(*e.args[1]) : a;
    }
    if (op == "or") {
      Value a = eval(*e.args[0]);
      return truthy(a) ? a : eval(*e.args[1]);
    }
    const Value a = eval(*e.args[0]), b = eval(*e.args[1]);
    using T = Value::Type;
    if (op == "==") return Value(equal(a, b));
    if (op == "!=") return Value(!equal(a, b));
    if (op == "~") return Value(to_text(a) + to_text(b));
    if (op == "in" || op == "not in") {
      bool r = false;
      if (b.type == T::String && a.type == T::String) r = b.s.find(a.s) != std::string::npos;
      else if (b.type == T::List) r = std::any_of(b.list->begin(), b.list->end(), [&](const Value& x) { return equal(x, a); });
      else if (b.type == T::Dict) r = a.type == T::String && b.dict->count(a.s);
      else fail(std::string("'in' on a ") + type_name(b));
      return Value(op == "in" ? r : !r);
    }
    if (op == "+") {
      if (a.type == T::String && b.type == T::String) return Value(a.s + b.s);
      if (a.type == T::List && b.type == T::List) {
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value(std::move(l));
      }
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int c;
      if (a.type == T::String && b.type == T::String) c = a.s.compare(b.s);
      else if (a.type == T::Int && b.type == T::Int) c = a.i < b.i ? -1 : a.i > b.i;
      else fail(std::string("cannot compare a ") + type_name(a) + " with a " + type_name(b));
      return Value(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (a.type == T::Int && b.type == T::Int) {
      if (op == "+") return Value(a.i + b.i);
      if (op == "-") return Value(a.i - b.i);
      if (op == "*") return Value(a.i * b.i);
      if ((op == "//" || op == "%" || op == "/") && b.i == 0) fail("division by zero");
      // Python floors integer division and modulo towards negative infinity.
      const int64_t q = a.i / b.i - ((a.i % b.i != 0) && ((a.i < 0) != (b.i < 0)));
      if (op == "//") return Value(q);
      if (op == "%") return Value(a.i - q * b.i);
    }
    if (op == "*" && a.type == T::String && b.type == T::Int) {
      std::string s;
      for (int64_t k = 0; k < b.i; ++k) s += a.s;
      return Value(s);
    }
    fail("unsupported operands for '" + op + "': " + type_name(a) + " and " + type_name(b));
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::Attr: {
        const Value obj = eval(*e.args[0]);
        if (obj.type == Value::Type::Undefined) fail("attribute '" + e.name + "' of an undefined value");
        return get_item(obj, Value(e.name), e.name);
      }
      case Expr::Kind::Item: {
        const Value obj = eval(*e.args[0]);
        return get_item(obj, eval(*e.args[1]), "value");
      }
      case Expr::Kind::Call: return call(e);
      case Expr::Kind::Not: return Value(!truthy(eval(*e.args[0])));
      case Expr::Kind::Neg: {
        const Value v = eval(*e.args[0]);
        if (v.type != Value::Type::Int) fail(std::string("cannot negate a ") + type_name(v));
        return Value(-v.i);
      }
      case Expr::Kind::Binary: return binary(e);
      case Expr::Kind::Test: return Value(test(e));
      case Expr::Kind::Filter: return filter(e);
      case Expr::Kind::Cond: return truthy(eval(*e.args[0])) ? eval(*e.args[1]) : eval(*e.args[2]);
      case Expr::Kind::ListLit: {
        List l;
        for (const auto& a : e.args) l.push_back(eval(*a));
        return Value(std::move(l));
      }
      case Expr::Kind::DictLit: {
        Dict d;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) d[to_text(eval(*e.args[k]))] = eval(*e.args[k + 1]);
        return Value(std::move(d));
      }
    }
    return Value();
  }

  std::vector<Dict> scopes_;
  std::string where_;
};

}  // namespace

Template Template::parse(std::string_view source, const std::string& where) {
  Template t;
  t.where_ = where;
  // Jinja2's lexer first turns every \r\n and \r into \n and drops one final newline
  // (keep_trailing_newline is off in transformers).
  std::string text;
  text.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      text += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      text += source[k];
    }
  }
  if (!text.empty() && text.back() == '\n') text.pop_back();
  Parser p(split_source(text, where), where);
  t.body_ = std::make_shared<const std::vector<Node>>(p.parse_all());
  return t;
}

std::string Template::render(const Dict& context) const {
  std::string out;
  if (!body_) return out;
  Renderer r(context, where_);
  r.run(*body_, out);
  return out;
}

}  // namespace epserve::tokenizer::jinja
