"""Models behind HTTP APIs: Ollama and OpenAI-compatible endpoints (GitHub Models, Azure AI, NVIDIA NIM,
vLLM, llama.cpp's server, ``agents serve``)."""
