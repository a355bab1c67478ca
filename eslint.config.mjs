// Lint enforces the structure instead of relying on review: the layers import only downwards, there are no import
// cycles, no file grows past about 400 lines of code, workflow and domain code stays deterministic (no Node
// built-ins, native/, store/ or services), and activities reach workflows only as types.
import js from '@eslint/js';
import comments from '@eslint-community/eslint-plugin-eslint-comments';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';
import importX from 'eslint-plugin-import-x';
import tseslint from 'typescript-eslint';
import { builtinModules } from 'node:module';

const nodeBuiltins = builtinModules.flatMap((name) => [name, `node:${name}`]);

// Bottom to top. A folder may import its own layer and the ones below it, never one above: a lower layer that
// reached up would make the layers a tangle that no newcomer can read bottom-up.
const LAYERS = [
  'domain',
  'config',
  'observability',
  'native',
  // The test guest's image build: from Debian packages, for the hypervisors below workers and tests.
  'guest',
  'store',
  'activities',
  'workflows',
  'workers',
  'api',
  'cli',
];
const folderPatterns = (folder) => [`**/${folder}/**`, `**/${folder}`];
const layerAbove = (layer) =>
  LAYERS.slice(LAYERS.indexOf(layer) + 1).map((above) => ({
    group: folderPatterns(above),
    message: `${layer}/ sits below ${above}/ and must not import it.`,
  }));

const NOT_DETERMINISTIC = ['pg', 'pino', 'fastify', 'prom-client', '@temporalio/client', '@temporalio/worker'];
const noBuiltins = nodeBuiltins.map((name) => ({ name, message: 'Must stay deterministic: no Node built-ins.' }));

const restrictions = {
  // Pure, deterministic code that workflows, the store and the API share: zod and itself, config only as types.
  domain: [
    ...LAYERS.slice(1)
      .filter((l) => l !== 'config')
      .map((l) => ({ group: folderPatterns(l), message: `domain/ is pure: it must not import ${l}/.` })),
    { group: folderPatterns('config'), allowTypeImports: true, message: 'domain/ may import config/ only as types.' },
    { group: [...NOT_DETERMINISTIC, '@temporalio/*'], message: 'domain/ is pure: no services and no Temporal.' },
  ],
  workflows: [
    ...['native', 'store', 'config', 'observability', 'workers', 'api', 'cli'].map((l) => ({
      group: folderPatterns(l),
      message: `Workflows must stay deterministic: no ${l}/ (shared pure code belongs in domain/).`,
    })),
    {
      group: folderPatterns('activities'),
      allowTypeImports: true,
      message: 'Import activities into workflows only with `import type`.',
    },
    { group: [...NOT_DETERMINISTIC, '@temporalio/activity'], message: 'Not deterministic.' },
  ],
};

const layerConfigs = LAYERS.map((layer) => ({
  files: [`${layer}/**/*.ts`],
  ignores: [`${layer}/**/*.test.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        paths: layer in restrictions ? noBuiltins : [],
        patterns: restrictions[layer] ?? layerAbove(layer),
      },
    ],
  },
}));

export default tseslint.config(
  { ignores: ['node_modules/**', 'dist/**', 'bench/results/**', 'native/temporal/bin/**', '**/*.mjs'] },
  { linterOptions: { reportUnusedDisableDirectives: 'error' } },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    plugins: { 'import-x': importX, '@eslint-community/eslint-comments': comments },
    settings: {
      ...importX.flatConfigs.typescript.settings,
      'import-x/resolver': undefined,
      'import-x/resolver-next': [createTypeScriptImportResolver({ project: 'tsconfig.json' })],
    },
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      // Fastify plugins and handlers are async by contract, whether or not they await.
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true, allowBoolean: true }],
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false } }],
      'import-x/no-cycle': ['error', { ignoreExternal: true }],
      // A file past about 400 lines of code splits along its seams; one that must not says why in an
      // eslint-disable comment at its top (require-description below).
      'max-lines': ['error', { max: 400, skipBlankLines: true, skipComments: true }],
      // A disabled rule says why, so that a long file or an exception carries its reason at its top.
      '@eslint-community/eslint-comments/require-description': ['error', { ignore: [] }],
    },
  },
  ...layerConfigs,
  {
    files: ['**/*.test.ts', 'test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['test', 'describe', 'it', 'suite', 'before', 'after'] },
          ],
        },
      ],
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
    },
  },
);
