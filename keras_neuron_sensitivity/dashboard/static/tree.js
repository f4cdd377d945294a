// The layers as a tree, from the "/" in their keys: a nested model's layers
// and the sites inside a layer (`llama_backbone/transformer_layer_3/ffn`) sit
// in the group of their path. A key can also be a group: a block's own
// output (`.../transformer_layer_3`) is the first layer of its group.

// Sites offered on their group's header (LLM interpretability's neurons are
// the feed-forward units; `heads` is the attention context).
export const SHORTCUTS = ['ffn', 'heads'];

/**
 * The root of the tree of `keys` (in the model's order, which the tree
 * keeps). A node: `{path, name, key, children, parent}`; `key` is the layer
 * key shown at the node (null for a path that is only a group). A group
 * that holds a single node and no layer of its own is merged into it
 * (`block/inner` alone in `block` is one layer named `block/inner`).
 */
export function buildTree(keys) {
  const root = {path: '', name: '', key: null, children: [], parent: null};
  const nodes = new Map([['', root]]);
  for (const key of keys) {
    const parts = key.split('/');
    let parent = root;
    for (let i = 1; i <= parts.length; i++) {
      const path = parts.slice(0, i).join('/');
      let node = nodes.get(path);
      if (!node) {
        node = {path, name: parts[i - 1], key: null, children: [], parent};
        nodes.set(path, node);
        parent.children.push(node);
      }
      parent = node;
    }
    parent.key = key;
  }
  merge(root);
  return root;
}

function merge(node) {
  node.children = node.children.map((child) => {
    while (child.key === null && child.children.length === 1) {
      const only = child.children[0];
      only.name = `${child.name}/${only.name}`;
      only.parent = child.parent;
      child = only;
    }
    merge(child);
    return child;
  });
}

export function isGroup(node) {
  return node.children.length > 0;
}

/** Every layer key at or under `node`, in the model's order. */
export function keysUnder(node) {
  return [...(node.key === null ? [] : [node.key]), ...node.children.flatMap(keysUnder)];
}

/**
 * Whether a group is open before the user touches it: when it is the only
 * group among its siblings (a model's one backbone, a block's attention), so
 * that no click is spent on a lone group; blocks, many siblings, start closed.
 */
export function openByDefault(node) {
  return node.parent !== null && node.parent.children.filter(isGroup).length === 1;
}

/**
 * `[{name, key}]`: the `SHORTCUTS` sites under a group, each when the group
 * holds exactly one of that name (a block's `ffn`, not a backbone's eight).
 */
export function shortcuts(node) {
  const keys = keysUnder(node);
  const found = [];
  for (const name of SHORTCUTS) {
    const matches = keys.filter((k) => k !== node.key && k.split('/').pop() === name);
    if (matches.length === 1) found.push({name, key: matches[0]});
  }
  return found;
}

/**
 * The keys that match a filter: every space-separated term is a
 * case-insensitive substring of the key ("ffn", "layer_3 heads").
 */
export function filterKeys(keys, text) {
  const terms = text.toLowerCase().split(/\s+/).filter(Boolean);
  return keys.filter((key) => terms.every((term) => key.toLowerCase().includes(term)));
}
