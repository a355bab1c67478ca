/**
 * Where DWCP's link modes meet (native/dwcp/mode.ts classifyMode), shared with the config schema, whose
 * `network.*` defaults they are: one set of figures, not one per layer.
 */
export interface ModeThresholds {
  datacenterMaxRttMs: number;
  internetMinRttMs: number;
  datacenterMinBandwidthMbps: number;
}

export const DEFAULT_MODE_THRESHOLDS: Readonly<ModeThresholds> = {
  datacenterMaxRttMs: 10,
  internetMinRttMs: 50,
  datacenterMinBandwidthMbps: 1000,
};
