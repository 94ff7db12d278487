"""The page at / as a person sees it: headless Chromium for the tests and the screenshot, the example images."""
