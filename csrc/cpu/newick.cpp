// Iterative Newick parser (no recursion, so 10^6-tip caterpillar trees do not overflow the stack).
// Nodes are numbered as they close, which is a postorder; the root is the last node.
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/unifrac.h"

namespace aam::unifrac {
namespace {

[[noreturn]] void fail(const std::string& what, size_t pos) {
  throw std::invalid_argument("unparseable Newick: " + what + " at character " + std::to_string(pos + 1));
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_delim(char c) { return c == '(' || c == ')' || c == ',' || c == ':' || c == ';' || c == '[' || is_space(c); }

struct Parser {
  const char* s;
  size_t n;
  size_t i = 0;
  ParsedTree out;

  // Whitespace and [comments].
  void skip() {
    while (i < n) {
      if (is_space(s[i])) {
        ++i;
      } else if (s[i] == '[') {
        size_t start = i;
        while (i < n && s[i] != ']') ++i;
        if (i == n) fail("unterminated comment '['", start);
        ++i;
      } else {
        break;
      }
    }
  }

  std::string label() {
    skip();
    std::string name;
    if (i < n && s[i] == '\'') {
      size_t start = i++;
      while (true) {
        if (i >= n) fail("unterminated quoted label", start);
        if (s[i] == '\'') {
          if (i + 1 < n && s[i + 1] == '\'') {  // '' is an escaped quote
            name.push_back('\'');
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        name.push_back(s[i++]);
      }
    } else {
      size_t start = i;
      while (i < n && !is_delim(s[i])) {
        if (s[i] == '\'' || s[i] == ']') fail(std::string("unexpected '") + s[i] + "'", i);
        ++i;
      }
      name.assign(s + start, i - start);
    }
    skip();
    return name;
  }

  double length() {
    if (i >= n || s[i] != ':') return std::nan("");
    ++i;
    skip();
    if (i >= n) fail("expected a branch length after ':'", i);
    char* end = nullptr;
    double v = std::strtod(s + i, &end);
    if (end == s + i) fail("expected a branch length after ':'", i);
    i = static_cast<size_t>(end - s);
    skip();
    return v;
  }

  int32_t add_node(std::string name, double len, bool tip) {
    out.parent.push_back(-1);
    out.length.push_back(len);
    out.name.push_back(std::move(name));
    out.is_tip.push_back(tip ? 1 : 0);
    if (out.parent.size() > static_cast<size_t>(INT32_MAX)) fail("too many nodes", i);
    return static_cast<int32_t>(out.parent.size() - 1);
  }

  void run() {
    std::vector<std::vector<int32_t>> open;  // children of each '(' not yet closed
    std::vector<size_t> open_pos;
    skip();
    if (i >= n) fail("empty text", i);
    while (true) {
      // A node starts here: '(' opens an internal node, anything else is a tip.
      skip();
      if (i < n && s[i] == '(') {
        open.emplace_back();
        open_pos.push_back(i);
        ++i;
        continue;
      }
      if (i < n && s[i] == ';' && open.empty()) fail("empty tree", i);
      std::string name = label();
      double len = length();
      int32_t id = add_node(std::move(name), len, true);
      // After a node: ',' (sibling), ')' (close parent, then its label and length), or the end.
      while (true) {
        skip();
        if (open.empty()) {
          if (i < n && s[i] == ';') {
            ++i;
            skip();
            if (i < n) fail("text after the closing ';'", i);
          } else if (i < n) {
            fail(std::string("unexpected '") + s[i] + "' after the root", i);
          }
          return;
        }
        open.back().push_back(id);
        if (i >= n) fail("unexpected end of text: unclosed '(' opened", open_pos.back());
        if (s[i] == ',') {
          ++i;
          break;
        }
        if (s[i] != ')') fail(std::string("expected ',' or ')' but found '") + s[i] + "'", i);
        ++i;
        std::vector<int32_t> children = std::move(open.back());
        open.pop_back();
        open_pos.pop_back();
        std::string iname = label();
        double ilen = length();
        id = add_node(std::move(iname), ilen, false);
        for (int32_t c : children) out.parent[c] = id;
      }
    }
  }
};

}  // namespace

ParsedTree parse_newick(const char* text, size_t size) {
  Parser p{text, size};
  p.run();
  return std::move(p.out);
}

}  // namespace aam::unifrac
