"""A stateful fake Stripe for tests: localstripe plus what the 2026-10-28 API adds
(prices, Billing Meters, multi-item subscriptions with prorations, Checkout Sessions,
webhook endpoints with signed delivery) and test-only controls under `/_test/`."""
