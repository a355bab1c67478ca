/**
 * A minimal XML tree, serializer and parser for the documents libvirt exchanges with us.
 *
 * User values reach XML only through `serializeXml`, which escapes every text node and attribute, so a
 * hostile name or path can never open a new element. The parser covers what libvirt emits (elements,
 * attributes, text, comments, CDATA, the XML declaration, predefined and numeric entities) and refuses
 * DTDs, which also rules out entity-expansion attacks.
 */

export interface XmlElement {
  readonly name: string;
  readonly attributes: Readonly<Record<string, string>>;
  readonly children: readonly XmlNode[];
}

export type XmlNode = XmlElement | string;

export function element(
  name: string,
  attributes: Readonly<Record<string, string | number | undefined>> = {},
  children: readonly (XmlNode | undefined)[] = [],
): XmlElement {
  const attrs: Record<string, string> = {};
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== undefined) attrs[key] = String(value);
  }
  return { name, attributes: attrs, children: children.filter((c): c is XmlNode => c !== undefined) };
}

const NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_.:-]*$/;

export function escapeXmlText(value: string): string {
  assertXmlChars(value);
  return value.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function escapeXmlAttribute(value: string): string {
  assertXmlChars(value);
  return value
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;')
    .replace(/\t/g, '&#9;')
    .replace(/\n/g, '&#10;')
    .replace(/\r/g, '&#13;');
}

// XML 1.0 cannot carry C0 controls other than tab, LF and CR, nor U+FFFE/U+FFFF, even escaped.
export function isXmlChar(code: number): boolean {
  return code === 0x09 || code === 0x0a || code === 0x0d || (code >= 0x20 && code !== 0xfffe && code !== 0xffff);
}

function assertXmlChars(value: string): void {
  for (let i = 0; i < value.length; i++) {
    if (!isXmlChar(value.charCodeAt(i))) throw new Error('value contains characters that XML 1.0 cannot carry');
  }
}

function assertName(name: string): void {
  if (!NAME_PATTERN.test(name)) throw new Error(`invalid XML name: ${JSON.stringify(name)}`);
}

/** Serializes with two-space indentation; elements holding only text stay on one line. */
export function serializeXml(root: XmlElement): string {
  return `${serializeElement(root, '')}\n`;
}

function serializeElement(node: XmlElement, indent: string): string {
  assertName(node.name);
  const attrs = Object.entries(node.attributes)
    .map(([key, value]) => {
      assertName(key);
      return ` ${key}="${escapeXmlAttribute(value)}"`;
    })
    .join('');
  if (node.children.length === 0) return `${indent}<${node.name}${attrs}/>`;
  if (node.children.every((c) => typeof c === 'string')) {
    return `${indent}<${node.name}${attrs}>${node.children.map((c) => escapeXmlText(c)).join('')}</${node.name}>`;
  }
  const inner = node.children
    .map((c) => (typeof c === 'string' ? `${indent}  ${escapeXmlText(c)}` : serializeElement(c, `${indent}  `)))
    .join('\n');
  return `${indent}<${node.name}${attrs}>\n${inner}\n${indent}</${node.name}>`;
}

export class XmlParseError extends Error {
  override readonly name = 'XmlParseError';
}

/** Parses one document. Whitespace-only text between elements is dropped. */
export function parseXml(text: string): XmlElement {
  const parser = new Parser(text);
  return parser.document();
}

const PREDEFINED_ENTITIES: Readonly<Record<string, string>> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

class Parser {
  private pos = 0;

  constructor(private readonly src: string) {}

  document(): XmlElement {
    this.skipMisc();
    if (this.src.startsWith('<!DOCTYPE', this.pos)) this.fail('DTDs are not accepted');
    const root = this.element();
    this.skipMisc();
    if (this.pos !== this.src.length) this.fail('content after the root element');
    return root;
  }

  private skipMisc(): void {
    for (;;) {
      this.skipSpace();
      if (this.src.startsWith('<?', this.pos)) this.skipPast('?>');
      else if (this.src.startsWith('<!--', this.pos)) this.skipPast('-->');
      else return;
    }
  }

  private element(): XmlElement {
    this.expect('<');
    const name = this.name();
    const attributes: Record<string, string> = {};
    for (;;) {
      const hadSpace = this.skipSpace();
      if (this.src.startsWith('/>', this.pos)) {
        this.pos += 2;
        return { name, attributes, children: [] };
      }
      if (this.src[this.pos] === '>') {
        this.pos += 1;
        break;
      }
      if (!hadSpace) this.fail('expected whitespace before attribute');
      const key = this.name();
      this.skipSpace();
      this.expect('=');
      this.skipSpace();
      const quote = this.src[this.pos];
      if (quote !== '"' && quote !== "'") this.fail('expected quoted attribute value');
      const end = this.src.indexOf(quote, this.pos + 1);
      if (end < 0) this.fail('unterminated attribute value');
      const raw = this.src.slice(this.pos + 1, end);
      if (raw.includes('<')) this.fail('"<" in attribute value');
      if (key in attributes) this.fail(`duplicate attribute ${key}`);
      attributes[key] = this.decode(raw);
      this.pos = end + 1;
    }
    const children: XmlNode[] = [];
    let text = '';
    const flushText = (): void => {
      if (text.trim() !== '') children.push(text);
      text = '';
    };
    for (;;) {
      if (this.pos >= this.src.length) this.fail(`unterminated element <${name}>`);
      if (this.src.startsWith('</', this.pos)) {
        this.pos += 2;
        const closing = this.name();
        if (closing !== name) this.fail(`expected </${name}> but found </${closing}>`);
        this.skipSpace();
        this.expect('>');
        flushText();
        return { name, attributes, children };
      }
      if (this.src.startsWith('<!--', this.pos)) {
        this.skipPast('-->');
      } else if (this.src.startsWith('<![CDATA[', this.pos)) {
        const end = this.src.indexOf(']]>', this.pos);
        if (end < 0) this.fail('unterminated CDATA');
        text += this.src.slice(this.pos + 9, end);
        this.pos = end + 3;
      } else if (this.src.startsWith('<?', this.pos)) {
        this.skipPast('?>');
      } else if (this.src[this.pos] === '<') {
        flushText();
        children.push(this.element());
      } else {
        const next = this.src.indexOf('<', this.pos);
        const end = next < 0 ? this.src.length : next;
        text += this.decode(this.src.slice(this.pos, end));
        this.pos = end;
      }
    }
  }

  private decode(raw: string): string {
    return raw.replace(/&([^;&\s]*);?/g, (match, entity: string) => {
      if (!match.endsWith(';')) this.fail(`bare "&" in ${JSON.stringify(raw)}`);
      if (entity in PREDEFINED_ENTITIES) return PREDEFINED_ENTITIES[entity] as string;
      const numeric = /^#(?:x([0-9a-fA-F]+)|([0-9]+))$/.exec(entity);
      if (numeric) return String.fromCodePoint(parseInt(numeric[1] ?? numeric[2] ?? '', numeric[1] ? 16 : 10));
      return this.fail(`unknown entity &${entity};`);
    });
  }

  private name(): string {
    const match = /^[A-Za-z_][A-Za-z0-9_.:-]*/.exec(this.src.slice(this.pos, this.pos + 256));
    if (!match) this.fail('expected a name');
    this.pos += match[0].length;
    return match[0];
  }

  private skipSpace(): boolean {
    const start = this.pos;
    while (this.pos < this.src.length && ' \t\r\n'.includes(this.src[this.pos] as string)) this.pos += 1;
    return this.pos > start;
  }

  private skipPast(terminator: string): void {
    const end = this.src.indexOf(terminator, this.pos);
    if (end < 0) this.fail(`missing ${terminator}`);
    this.pos = end + terminator.length;
  }

  private expect(token: string): void {
    if (!this.src.startsWith(token, this.pos)) this.fail(`expected ${JSON.stringify(token)}`);
    this.pos += token.length;
  }

  private fail(message: string): never {
    throw new XmlParseError(`${message} at offset ${this.pos}`);
  }
}

/** First child element with the given name, if any. */
export function childElement(parent: XmlElement, name: string): XmlElement | undefined {
  return parent.children.find((c): c is XmlElement => typeof c !== 'string' && c.name === name);
}

export function childElements(parent: XmlElement, name: string): XmlElement[] {
  return parent.children.filter((c): c is XmlElement => typeof c !== 'string' && c.name === name);
}

export function textContent(node: XmlElement): string {
  return node.children.map((c) => (typeof c === 'string' ? c : textContent(c))).join('');
}
